//! `--write-env`: sets a few variables in a `.env` file and leaves every other line as it was.
//!
//! A line `NAME=...` (or a commented placeholder `# NAME=...`, as in `.env.example`) becomes
//! `NAME=value`; a variable the file does not mention is appended. The file is replaced
//! atomically (written beside it, then renamed) and, when created, readable by its owner only:
//! it holds secrets.

use std::io::Write;
use std::path::Path;

/// Sets `vars` in the file at `path` (created when missing).
pub fn update(path: &Path, vars: &[(String, String)]) -> std::io::Result<()> {
    let old = match std::fs::read_to_string(path) {
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
    if let Some(existing) = old.as_ref().and(std::fs::metadata(path).ok()) {
        std::fs::set_permissions(&tmp, existing.permissions())?;
    }
    std::fs::rename(&tmp, path)
}

/// The text with `vars` set (pure: the tests' subject).
pub fn rewrite(old: &str, vars: &[(String, String)]) -> String {
    let mut done = vec![false; vars.len()];
    let mut out = String::with_capacity(old.len() + 64);
    for line in old.lines() {
        let bare = line.trim_start().trim_start_matches('#').trim_start();
        let name = bare.split('=').next().unwrap_or("").trim();
        match vars
            .iter()
            .position(|(n, _)| n == name && bare.contains('='))
        {
            Some(i) if !done[i] => {
                out.push_str(&format!("{}={}\n", vars[i].0, vars[i].1));
                done[i] = true;
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    for (i, (name, value)) in vars.iter().enumerate() {
        if !done[i] {
            out.push_str(&format!("{name}={value}\n"));
        }
    }
    out
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
            "HOST=127.0.0.1\nKOMMO_REPLY_FIELD_ID=4439091\nKOMMO_ACCOUNT_ID=33981183\n# a comment\nKOMMO_SUBDOMAIN=conta\n"
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
