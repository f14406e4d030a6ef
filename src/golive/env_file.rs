//! `--write-env`: sets a few variables in a `.env` file and leaves every other line as it was.
//!
//! A line `NAME=...` or `export NAME=...` becomes `NAME=value` (every such line: the file's
//! reader takes the first), keeping its trailing comment and line ending; without one, the
//! commented placeholder `# NAME=...` (as in `.env.example`) is filled; a variable the file does
//! not mention is appended. The file is replaced
//! atomically (written beside it, then renamed) and, when created, readable by its owner only:
//! it holds secrets.

use std::io::Write;
use std::path::Path;

/// Sets `vars` in the file at `path` (created when missing; a symbolic link is followed, so
/// the file it points to is the one changed).
pub fn update(path: &Path, vars: &[(String, String)]) -> std::io::Result<()> {
    let path = match std::fs::canonicalize(path) {
        Ok(real) => real,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => path.to_path_buf(),
        Err(e) => return Err(e),
    };
    let old = match std::fs::read_to_string(&path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let text = rewrite(old.as_deref().unwrap_or(""), vars);
    let tmp = path.with_extension("conversa-tmp");
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
    }
    if let Some(existing) = old.as_ref().and(std::fs::metadata(&path).ok()) {
        std::fs::set_permissions(&tmp, existing.permissions())?;
    }
    std::fs::rename(&tmp, &path)
}

/// The text with `vars` set (pure: the tests' subject). Every line that sets a variable —
/// `NAME=…`, `export NAME=…`, or the commented placeholder `# NAME=…` when the file has no
/// live line for it — gets the new value; a trailing ` # comment` and the line ending (LF or
/// CRLF) are kept.
pub fn rewrite(old: &str, vars: &[(String, String)]) -> String {
    let crlf = old.contains("\r\n");
    let newline = if crlf { "\r\n" } else { "\n" };
    let lines: Vec<&str> = old.lines().collect();
    let parsed: Vec<Option<Assignment>> = lines.iter().map(|l| Assignment::parse(l)).collect();
    let live = |name: &str| {
        parsed
            .iter()
            .flatten()
            .any(|a| a.name == name && !a.commented)
    };
    let mut set = vec![false; vars.len()];
    let mut out = String::with_capacity(old.len() + 64);
    for (line, assignment) in lines.iter().zip(&parsed) {
        let target = assignment.as_ref().and_then(|a| {
            let i = vars.iter().position(|(n, _)| *n == a.name)?;
            // A placeholder is filled only when no live line sets the variable, and only once.
            let take = if a.commented {
                !live(&a.name) && !set[i]
            } else {
                true
            };
            take.then_some((i, a))
        });
        match target {
            Some((i, a)) => {
                out.push_str(&format!(
                    "{}{}={}{}",
                    a.export, vars[i].0, vars[i].1, a.comment
                ));
                set[i] = true;
            }
            None => out.push_str(line),
        }
        out.push_str(newline);
    }
    for (i, (name, value)) in vars.iter().enumerate() {
        if !set[i] {
            out.push_str(&format!("{name}={value}{newline}"));
        }
    }
    out
}

/// One line that sets a variable.
struct Assignment {
    name: String,
    /// `export ` when the line had it.
    export: &'static str,
    /// A trailing comment, with the blanks before it (`   # text`), or nothing.
    comment: String,
    /// A `# NAME=...` placeholder.
    commented: bool,
}

impl Assignment {
    fn parse(line: &str) -> Option<Assignment> {
        let trimmed = line.trim_start();
        let (commented, rest) = match trimmed.strip_prefix('#') {
            Some(rest) => (true, rest.trim_start()),
            None => (false, trimmed),
        };
        let (export, rest) = match rest.strip_prefix("export ") {
            Some(rest) => ("export ", rest.trim_start()),
            None => ("", rest),
        };
        let (name, value) = rest.split_once('=')?;
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        if !valid {
            return None;
        }
        let comment = value
            .find(" #")
            .or_else(|| value.find("\t#"))
            .map(|i| {
                let start = value[..i].trim_end().len();
                value[start..].to_owned()
            })
            .unwrap_or_default();
        Some(Assignment {
            name: name.to_owned(),
            export,
            comment,
            commented,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn sets_existing_and_placeholder_lines_and_appends_the_rest() {
        let old = "HOST=127.0.0.1\n# KOMMO_REPLY_FIELD_ID=           # the lead field\nKOMMO_ACCOUNT_ID=0 # id\n# a comment\n";
        let new = rewrite(
            old,
            &vars(&[
                ("KOMMO_REPLY_FIELD_ID", "4439091"),
                ("KOMMO_ACCOUNT_ID", "33981183"),
                ("KOMMO_SUBDOMAIN", "conta"),
            ]),
        );
        assert_eq!(
            new,
            "HOST=127.0.0.1\nKOMMO_REPLY_FIELD_ID=4439091           # the lead field\nKOMMO_ACCOUNT_ID=33981183 # id\n# a comment\nKOMMO_SUBDOMAIN=conta\n"
        );
    }

    #[test]
    fn a_second_run_changes_nothing() {
        let v = vars(&[("KOMMO_REPLY_FIELD_ID", "1")]);
        let once = rewrite("A=b\n", &v);
        assert_eq!(rewrite(&once, &v), once);
    }

    #[test]
    fn a_name_that_merely_starts_like_a_variable_is_left_alone() {
        let new = rewrite(
            "KOMMO_REPLY_FIELD_ID_OLD=5\n",
            &vars(&[("KOMMO_REPLY_FIELD_ID", "1")]),
        );
        assert_eq!(new, "KOMMO_REPLY_FIELD_ID_OLD=5\nKOMMO_REPLY_FIELD_ID=1\n");
    }

    #[test]
    fn export_lines_duplicates_and_crlf_are_kept_in_their_form() {
        let old = "export KOMMO_REPLY_FIELD_ID=111\r\n# KOMMO_REPLY_FIELD_ID=222\r\nKOMMO_REPLY_FIELD_ID=333 # again\r\nX=1\r\n";
        let new = rewrite(old, &vars(&[("KOMMO_REPLY_FIELD_ID", "9")]));
        assert_eq!(
            new,
            "export KOMMO_REPLY_FIELD_ID=9\r\n# KOMMO_REPLY_FIELD_ID=222\r\nKOMMO_REPLY_FIELD_ID=9 # again\r\nX=1\r\n",
            "every live line set, the placeholder left (a live line exists), CRLF kept"
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_is_followed() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.env");
        std::fs::write(&real, "A=1\n").unwrap();
        let link = dir.path().join("link.env");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        update(&link, &vars(&[("B", "2")])).unwrap();
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(std::fs::read_to_string(&real).unwrap(), "A=1\nB=2\n");
    }

    #[test]
    fn update_creates_the_file_owner_only_and_keeps_other_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".env");
        update(&path, &vars(&[("X", "1")])).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        update(&path, &vars(&[("Y", "2")])).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "X=1\nY=2\n");
    }
}
