//! Parser of Kommo's standard webhooks (`message[add]`, `talk[add|update]`, `leads[…]`,
//! `unsorted[…]`, plus the unconfirmed `outgoing_message[add]`).
//!
//! # What
//!
//! Kommo POSTs `application/x-www-form-urlencoded` bodies whose keys are PHP-style bracket paths
//! (`message[add][0][author][name]=Oleg`, usually with the brackets percent-encoded:
//! `message%5Badd%5D%5B0%5D%5Bid%5D=…`). Every scalar is a string, items are numbered `[0]`,
//! `[1]`…, and one POST may carry several entity kinds plus an `account[…]` block. Proxies and
//! tests sometimes deliver the same tree as JSON (items as an array *or* an object keyed
//! `"0"`, `"1"`…, scalars as strings or numbers). Both encodings go through one code path:
//!
//! 1. decode into a small tree of borrowed strings ([`parse_form`]: `form_urlencoded` pairs,
//!    keys split on brackets; [`parse_json`]: `serde_json::Value`, arrays turned into numbered
//!    maps, numbers and booleans into their string form, `null` dropped);
//! 2. walk the tree once and pick out the fields we use ([`extract`]).
//!
//! Because step 2 is shared, both parsers return the same [`Webhook`] for the same tree, and
//! the same [`ParseError`] keys (always written in bracket form, e.g.
//! `message[add][0][contact_id]`).
//!
//! # Crate choice: `form_urlencoded` + our own bracket tree, not `serde_qs`
//!
//! * **Speed.** `form_urlencoded::parse` yields borrowed `Cow<str>` pairs (no allocation unless a
//!   value contains `%` escapes or `+`); measured ≈ 3.7 µs for a 600 B Kommo body against ≈ 7.9 µs
//!   for owned maps (docs/architecture.md, *Measured*). Tree segments borrow from the body when the key was not
//!   escaped, and an escaped key allocates a segment only the first time the tree sees it.
//! * **Kommo's shape is open-ended.** A POST mixes entity kinds, unknown entities must be
//!   reported rather than rejected, and for the unconfirmed outgoing/unsorted shapes we look for
//!   several spellings of a field. With `serde_qs` we would deserialize into a generic map anyway
//!   and walk it by hand, i.e. do the same work plus serde's.
//! * **Errors name the key.** A bad `contact_id` must be reported as
//!   `message[add][0][contact_id]`; a generic deserializer reports a Rust type path.
//! * **Limits we choose.** `serde_qs` defaults to depth 5 (exactly
//!   `message[add][0][author][name]`, too tight for `unsorted` custom fields) and, before 1.0,
//!   to a strict mode that does not treat `%5B`/`%5D` as brackets — which is how Kommo sends them.
//!   Our limits ([`MAX_DEPTH`], [`MAX_PAIRS`], [`MAX_ITEM_INDEX`]) apply identically to JSON.
//!
//! # Leniency rules
//!
//! * Fields confirmed by a real capture or the docs (message `id`, `contact_id`, `talk_id`,
//!   `created_at`, `element_id`/`entity_id`; lead `id`, `status_id`, …) are strict: a required one
//!   that is missing, or any that is present and not a number where a number is expected, is a
//!   [`ParseError`].
//! * Unconfirmed shapes (talk items, unsorted items, outgoing-only spellings, attachment and
//!   author details, linked contacts) are lenient: every plausible spelling is tried, and a value
//!   that does not parse is treated as absent.
//! * Unknown keys are ignored; unknown `entity[action]` pairs (`task[add]`, `leads[note]`,
//!   `contacts[update]`…) are listed in [`Webhook::unknown`]; an empty body, or one with only
//!   `account[…]`, is a valid empty webhook.
//! * Form decoding follows `form_urlencoded` semantics: `+` is a space, an invalid `%` escape is
//!   kept literally, invalid UTF-8 becomes U+FFFD. A key with an unclosed `[` keeps the part
//!   before it (`a[b` → `a`); trailing text after the last `]` is ignored (PHP behaviour).
//!
//! # Order of events
//!
//! Entities are visited in a fixed order (`leads`, `message`, `outgoing_message`, `talk`,
//! `unsorted`; i.e. sorted by name, then by action), items in index order. The body order of
//! different entity kinds is not preserved (JSON objects have none to preserve anyway); use
//! `created_at` to order messages.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

/// Maximum number of path segments in a key: `message[add][0][author][name]` has 5,
/// `unsorted[add][0][data][contacts][0][custom_fields][0][values][0][value]` has 11.
pub const MAX_DEPTH: usize = 12;
/// Maximum number of form pairs (or JSON values) in one body.
pub const MAX_PAIRS: usize = 10_000;
/// Highest accepted item index in `entity[action][N]`.
pub const MAX_ITEM_INDEX: usize = 999;

/// Longest key (in bytes) quoted in a [`ParseError`] or in [`Webhook::unknown`].
const MAX_QUOTED_KEY: usize = 200;
/// Longest value (in bytes) quoted in a [`ParseError`] message.
const MAX_QUOTED_VALUE: usize = 64;

// ---------------------------------------------------------------------------------------------
// Output types
// ---------------------------------------------------------------------------------------------

/// One parsed webhook POST.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Webhook {
    /// The `account[…]` block, if the body had one.
    pub account: Option<AccountRef>,
    /// The understood items, in the order described in the module docs.
    pub events: Vec<WebhookEvent>,
    /// Top-level `entity[action]` keys that were not understood, e.g. `"task[add]"` (or a bare
    /// top-level name such as `"foo"` when it carried no action).
    pub unknown: Vec<String>,
    /// Items that could not be read (a message without `contact_id`, a lead id that is not a
    /// number…), each with the key at fault. The other items of the body still apply: Kommo
    /// resends a refused body whole and disables a hook that keeps failing.
    pub rejected: Vec<ParseError>,
    /// The body has Kommo's shape: at least one top-level name carries something below it
    /// (`message[add]…`, `account[id]`…; in JSON an object or array with a non-null value).
    /// A body without (empty, `a=1`, `{"a": []}`) is not a Kommo webhook.
    pub shaped: bool,
}

/// `account[id]`, `account[subdomain]` (`account[_links][self]` is ignored).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AccountRef {
    pub id: Option<u64>,
    pub subdomain: Option<String>,
}

/// One understood webhook item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum WebhookEvent {
    /// `message[add]` (incoming or outgoing by `type`) or `outgoing_message[add]` (outgoing).
    Message(MessageItem),
    /// `talk[add]` / `talk[update]`.
    Talk {
        /// `add` or `update`.
        action: String,
        talk_id: Option<u64>,
        contact_id: Option<u64>,
        chat_id: Option<String>,
        /// `entity_id` when `entity_type` is `lead`.
        lead_id: Option<u64>,
        is_in_work: Option<bool>,
        origin: Option<String>,
    },
    /// `leads[add|update|status|responsible|delete|restore]`.
    Lead {
        action: String,
        lead_id: u64,
        responsible_user_id: Option<u64>,
        old_responsible_user_id: Option<u64>,
        status_id: Option<u64>,
        pipeline_id: Option<u64>,
        /// Linked contacts, when the item carries them (`contacts[0][id]` or similar).
        contact_ids: Vec<u64>,
    },
    /// `unsorted[add|update|delete]`.
    Unsorted {
        action: String,
        lead_id: Option<u64>,
        contact_id: Option<u64>,
        /// The unsorted entry's `uid`.
        raw_uid: Option<String>,
    },
}

/// A chat message (`message[add][N]` or `outgoing_message[add][N]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MessageItem {
    /// Chat-message UUID; the dedupe key.
    pub id: String,
    pub chat_id: Option<String>,
    pub talk_id: Option<u64>,
    pub contact_id: u64,
    /// `entity_id`/`element_id` when `entity_type=lead` or `element_type=2` (or an explicit
    /// `lead_id`).
    pub lead_id: Option<u64>,
    /// Empty when the message is only an attachment.
    pub text: String,
    /// Unix seconds; `0` when the item carried no `created_at`.
    pub created_at: i64,
    pub direction: Direction,
    pub author: Option<Author>,
    pub attachment: Option<AttachmentItem>,
    /// `telegram`, `com.amocrm.amocrmwa` (WhatsApp Lite), `waba`, …
    pub origin: Option<String>,
}

/// Who sent a message, from `type` (or the `outgoing_message` prefix).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// From the customer (`type=incoming`, or no `type`).
    #[default]
    Incoming,
    /// From the team, a bot or Salesbot (`type=outgoing`, or `outgoing_message[add]`).
    Outgoing,
}

/// `author[…]` of a message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Author {
    /// `author[id]` (amojo UUID), else `author[user_id]` (CRM user id, outgoing guesses).
    pub id: Option<String>,
    /// `author[type]`: `external` = customer; other values unconfirmed.
    pub kind: Option<String>,
    pub name: Option<String>,
}

/// `attachment[…]` of a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttachmentItem {
    /// `attachment[type]`: `voice`, `picture`, …; `file` when absent.
    pub kind: String,
    pub link: String,
    pub file_name: Option<String>,
}

/// Why a body was rejected: `key` is the offending bracket path (e.g.
/// `message[add][0][contact_id]`), or `body` for errors about the whole body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParseError {
    pub key: String,
    pub message: String,
}

impl ParseError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        let mut key = key.into();
        truncate(&mut key, MAX_QUOTED_KEY);
        Self {
            key,
            message: message.into(),
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

impl std::error::Error for ParseError {}

// ---------------------------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------------------------

/// Parses a body by its shape, whatever its `Content-Type` says: JSON when the first
/// non-whitespace byte is `{` or `[`, form otherwise. A JSON body sent with a form content type
/// (or a form as JSON) is read for what it is, never dropped as "nothing in it"; a form's
/// first key never starts with `{` or `[`.
pub fn parse(body: &[u8]) -> Result<Webhook, ParseError> {
    let json = matches!(
        body.iter().find(|b| !b.is_ascii_whitespace()),
        Some(b'{' | b'[')
    );
    if json {
        parse_json(body)
    } else {
        parse_form(body)
    }
}

/// Parses an `application/x-www-form-urlencoded` body with PHP bracket keys.
///
/// Borrowed: a key is split at its brackets while still encoded (Kommo percent-encodes them,
/// `message%5Badd%5D…`) and each segment is decoded on its own, so the tree borrows from the
/// body wherever a segment or value holds nothing to decode. The result is the same as
/// decoding the whole key first and splitting it then (a test holds the two side by side).
pub fn parse_form(body: &[u8]) -> Result<Webhook, ParseError> {
    let mut root = Map::new();
    for (count, (key, value)) in form_pairs(body).enumerate() {
        if count >= MAX_PAIRS {
            // Named by the first pair past the limit, or `body` when that key is blank.
            let key = if key.is_empty() {
                "body".into()
            } else {
                form_decode(key)
            };
            return Err(ParseError::new(
                key,
                format!("too many pairs (more than {MAX_PAIRS})"),
            ));
        }
        insert_pair(&mut root, key, form_decode(value))?;
    }
    extract(&root)
}

/// Parses a JSON body with the same nesting as the form (items as arrays or as objects keyed
/// `"0"`, `"1"`…; scalars as strings, numbers or booleans).
pub fn parse_json(body: &[u8]) -> Result<Webhook, ParseError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Webhook::default());
    }
    // serde_json bounds its own recursion (128 levels), so hostile nesting cannot overflow the
    // stack before our depth check runs.
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ParseError::new("body", format!("invalid JSON: {e}")))?;
    let serde_json::Value::Object(object) = value else {
        return Err(ParseError::new("body", "expected a JSON object"));
    };
    let mut budget = MAX_PAIRS;
    let root = json_object(object, 1, &mut budget).map_err(JsonError::into_parse_error)?;
    extract(&root)
}

// ---------------------------------------------------------------------------------------------
// The tree
// ---------------------------------------------------------------------------------------------

type Map<'a> = BTreeMap<Cow<'a, str>, Node<'a>>;

#[derive(Debug)]
enum Node<'a> {
    Leaf(Cow<'a, str>),
    Map(Map<'a>),
}

impl<'a> Node<'a> {
    fn as_map(&self) -> Option<&Map<'a>> {
        match self {
            Node::Map(m) => Some(m),
            Node::Leaf(_) => None,
        }
    }

    fn as_leaf(&self) -> Option<&str> {
        match self {
            Node::Leaf(s) => Some(s),
            Node::Map(_) => None,
        }
    }
}

/// The pairs of a form body, still encoded: split at `&` (empty pieces skipped), then at the
/// first `=` (no `=`: an empty value), as `form_urlencoded::parse` does.
fn form_pairs(body: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    body.split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.iter().position(|&b| b == b'=') {
            Some(at) => (&pair[..at], &pair[at + 1..]),
            None => (pair, &pair[pair.len()..]),
        })
}

/// Form-decodes `raw` (`+` is a space, `%XX` a byte, invalid UTF-8 replaced), borrowing when
/// there is nothing to decode.
fn form_decode(raw: &[u8]) -> Cow<'_, str> {
    if memchr::memchr2(b'%', b'+', raw).is_none() {
        return String::from_utf8_lossy(raw);
    }
    let spaced: Vec<u8> = raw
        .iter()
        .map(|&b| if b == b'+' { b' ' } else { b })
        .collect();
    let bytes: Vec<u8> = percent_encoding::percent_decode(&spaced).collect();
    match String::from_utf8(bytes) {
        Ok(text) => Cow::Owned(text),
        Err(e) => Cow::Owned(String::from_utf8_lossy(e.as_bytes()).into_owned()),
    }
}

/// The byte `raw[at..]` decodes to first, and how many raw bytes it takes (`%XX` three).
fn decoded_byte(raw: &[u8], at: usize) -> (u8, usize) {
    let hex = |b: u8| char::from(b).to_digit(16);
    if raw[at] == b'%'
        && let (Some(hi), Some(lo)) = (
            raw.get(at + 1).copied().and_then(hex),
            raw.get(at + 2).copied().and_then(hex),
        )
    {
        return ((hi * 16 + lo) as u8, 3);
    }
    (raw[at], 1)
}

/// The raw byte ranges of an encoded key's segments, as its decoded form would split:
/// `a[b][c]` and `a%5Bb%5D%5Bc%5D` → `a`, `b`, `c`. The name runs to the first `[`; then each
/// `[…]` is a segment, an unclosed `[` ends the key, and so does anything but `[` after a `]`.
/// `None` past [`MAX_DEPTH`] segments.
fn split_key(key: &[u8], out: &mut [(usize, usize); MAX_DEPTH]) -> Option<usize> {
    // The first `want`, raw or escaped, from `from` on. Bytes other than `want` and `%` decode
    // to themselves one by one, so jumping over them keeps in step with a decoder.
    let next = |from: usize, want: u8| {
        let mut at = from;
        while let Some(found) = memchr::memchr2(want, b'%', &key[at..]) {
            at += found;
            let (byte, len) = decoded_byte(key, at);
            if byte == want {
                return Some((at, len));
            }
            at += len;
        }
        None
    };
    let Some((mut open, mut open_len)) = next(0, b'[') else {
        out[0] = (0, key.len());
        return Some(1);
    };
    out[0] = (0, open);
    let mut n = 1;
    loop {
        let start = open + open_len;
        let Some((close, close_len)) = next(start, b']') else {
            break; // unclosed `[`: ignore the rest
        };
        if n == MAX_DEPTH {
            return None;
        }
        out[n] = (start, close);
        n += 1;
        let after = close + close_len;
        if after >= key.len() || decoded_byte(key, after).0 != b'[' {
            break;
        }
        (open, open_len) = (after, decoded_byte(key, after).1);
    }
    Some(n)
}

fn insert_pair<'a>(
    root: &mut Map<'a>,
    key: &'a [u8],
    value: Cow<'a, str>,
) -> Result<(), ParseError> {
    let mut ranges = [(0, 0); MAX_DEPTH];
    let Some(n) = split_key(key, &mut ranges) else {
        return Err(ParseError::new(
            form_decode(key),
            format!("nested too deep (more than {MAX_DEPTH} levels)"),
        ));
    };
    if ranges[0].0 == ranges[0].1 {
        return Ok(()); // no name: PHP drops such pairs
    }
    let segment = |(start, end): (usize, usize)| form_decode(&key[start..end]);
    if n == 2 && segment(ranges[0]) == "account" && segment(ranges[1]) == "id" {
        // Every `account[id]` given must be an id, not only the one that stays in the tree.
        account_id(&value)?;
    }
    let mut map = root;
    for &r in &ranges[..n - 1] {
        let node = map
            .entry(segment(r))
            .or_insert_with(|| Node::Map(Map::new()));
        if let Node::Leaf(_) = node {
            *node = Node::Map(Map::new()); // `a=1&a[b]=2`: the later, deeper key wins
        }
        map = match node {
            Node::Map(m) => m,
            Node::Leaf(_) => return Ok(()),
        };
    }
    match map.entry(segment(ranges[n - 1])) {
        // Duplicates: the last one wins (PHP), but a value never replaces a deeper key
        // (`a[b]=1&a=2` keeps `a[b]`), so what a body holds does not depend on its order.
        std::collections::btree_map::Entry::Occupied(mut found) => {
            if let Node::Leaf(_) = found.get() {
                found.insert(Node::Leaf(value));
            }
        }
        std::collections::btree_map::Entry::Vacant(slot) => {
            slot.insert(Node::Leaf(value));
        }
    }
    Ok(())
}

/// A JSON conversion error; the path is collected while unwinding (innermost first).
struct JsonError {
    path: Vec<String>,
    message: String,
}

impl JsonError {
    fn into_parse_error(self) -> ParseError {
        let mut segments = self.path.into_iter().rev();
        let mut key = segments.next().unwrap_or_default();
        for s in segments {
            if key.len() > MAX_QUOTED_KEY {
                break;
            }
            key.push('[');
            key.push_str(&s);
            key.push(']');
        }
        ParseError::new(key, self.message)
    }

    fn at(mut self, segment: String) -> Self {
        self.path.push(segment);
        self
    }
}

fn json_object(
    object: serde_json::Map<String, serde_json::Value>,
    depth: usize,
    budget: &mut usize,
) -> Result<Map<'static>, JsonError> {
    let mut map = Map::new();
    for (key, value) in object {
        if let Some(node) = json_node(&key, value, depth, budget)? {
            map.insert(Cow::Owned(key), node);
        }
    }
    Ok(map)
}

/// Converts the value found under `key` (a segment at `depth`).
fn json_node(
    key: &str,
    value: serde_json::Value,
    depth: usize,
    budget: &mut usize,
) -> Result<Option<Node<'static>>, JsonError> {
    use serde_json::Value;
    let fail = |message: String| JsonError {
        path: vec![key.to_owned()],
        message,
    };
    if depth > MAX_DEPTH {
        return Err(fail(format!(
            "nested too deep (more than {MAX_DEPTH} levels)"
        )));
    }
    if *budget == 0 {
        return Err(fail(format!("too many values (more than {MAX_PAIRS})")));
    }
    *budget -= 1;
    let node = match value {
        Value::Null => return Ok(None),
        Value::Bool(b) => Node::Leaf(Cow::Borrowed(if b { "true" } else { "false" })),
        Value::Number(n) => Node::Leaf(Cow::Owned(number_text(&n))),
        Value::String(s) => Node::Leaf(Cow::Owned(s)),
        Value::Object(o) => {
            Node::Map(json_object(o, depth + 1, budget).map_err(|e| e.at(key.to_owned()))?)
        }
        Value::Array(items) => {
            let mut map = Map::new();
            for (i, item) in items.into_iter().enumerate() {
                let index = i.to_string();
                match json_node(&index, item, depth + 1, budget) {
                    Ok(Some(node)) => {
                        map.insert(Cow::Owned(index), node);
                    }
                    Ok(None) => {}
                    Err(e) => return Err(e.at(key.to_owned())),
                }
            }
            Node::Map(map)
        }
    };
    Ok(Some(node))
}

// ---------------------------------------------------------------------------------------------
// Extraction
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Kind {
    Message { outgoing: bool },
    Talk,
    Lead,
    Unsorted,
}

fn kind_of(entity: &str, action: &str) -> Option<Kind> {
    Some(match (entity, action) {
        ("message", "add") => Kind::Message { outgoing: false },
        ("outgoing_message", "add") => Kind::Message { outgoing: true },
        ("talk", "add" | "update") => Kind::Talk,
        ("leads", "add" | "update" | "status" | "responsible" | "delete" | "restore") => Kind::Lead,
        ("unsorted", "add" | "update" | "delete") => Kind::Unsorted,
        _ => return None,
    })
}

/// Walks the decoded tree and builds the [`Webhook`].
fn extract(root: &Map<'_>) -> Result<Webhook, ParseError> {
    let mut webhook = Webhook {
        shaped: root
            .values()
            .any(|node| matches!(node, Node::Map(map) if !map.is_empty())),
        ..Webhook::default()
    };
    for (entity, node) in root {
        let entity: &str = entity;
        if entity == "account" {
            if let Node::Map(account) = node {
                webhook.account = Some(account_ref(account)?);
            }
            continue;
        }
        let Node::Map(actions) = node else {
            push_unknown(&mut webhook.unknown, entity.to_owned());
            continue;
        };
        for (action, items) in actions {
            let action: &str = action;
            let Some(kind) = kind_of(entity, action) else {
                push_unknown(&mut webhook.unknown, format!("{entity}[{action}]"));
                continue;
            };
            extract_items(&mut webhook, kind, entity, action, items)?;
        }
    }
    Ok(webhook)
}

fn extract_items(
    webhook: &mut Webhook,
    kind: Kind,
    entity: &str,
    action: &str,
    items: &Node<'_>,
) -> Result<(), ParseError> {
    let list: Vec<(&str, &Node<'_>)> = match items {
        Node::Map(map) => {
            let mut list = Vec::with_capacity(map.len());
            for (index, item) in map {
                let Some(i) = item_index(index) else {
                    webhook.rejected.push(ParseError::new(
                        format!("{entity}[{action}][{index}]"),
                        format!("item index must be a number from 0 to {MAX_ITEM_INDEX}"),
                    ));
                    continue;
                };
                list.push((i, index.as_ref(), item));
            }
            list.sort_by_key(|&(i, _, _)| i);
            list.into_iter().map(|(_, k, v)| (k, v)).collect()
        }
        // `leads[delete]=123`-style bodies: the value is the item.
        Node::Leaf(_) => match kind {
            Kind::Lead => vec![("0", items)],
            Kind::Message { .. } => {
                webhook.rejected.push(ParseError::new(
                    format!("{entity}[{action}]"),
                    "expected numbered items",
                ));
                return Ok(());
            }
            Kind::Talk | Kind::Unsorted => {
                push_unknown(&mut webhook.unknown, format!("{entity}[{action}]"));
                return Ok(());
            }
        },
    };
    let mut unknown_items = false;
    for (index, item) in list {
        let path = ItemPath {
            entity,
            action,
            index,
        };
        let event = match (kind, item) {
            (Kind::Message { outgoing }, Node::Map(map)) => {
                message(&Item { map, path }, outgoing).map(|m| Some(WebhookEvent::Message(m)))
            }
            (Kind::Lead, Node::Map(map)) => lead(&Item { map, path }).map(Some),
            (Kind::Lead, Node::Leaf(value)) => {
                parse_u64_strict(value, || path.item_key()).map(|lead_id| {
                    Some(WebhookEvent::Lead {
                        action: action.to_owned(),
                        lead_id,
                        responsible_user_id: None,
                        old_responsible_user_id: None,
                        status_id: None,
                        pipeline_id: None,
                        contact_ids: Vec::new(),
                    })
                })
            }
            (Kind::Talk, Node::Map(map)) => Ok(Some(talk(&Item { map, path }))),
            (Kind::Unsorted, Node::Map(map)) => Ok(Some(unsorted(&Item { map, path }))),
            (Kind::Message { .. }, Node::Leaf(_)) => {
                Err(ParseError::new(path.item_key(), "expected an object"))
            }
            (Kind::Talk | Kind::Unsorted, Node::Leaf(_)) => {
                unknown_items = true;
                Ok(None)
            }
        };
        match event {
            Ok(event) => webhook.events.extend(event),
            Err(e) => webhook.rejected.push(e),
        }
    }
    if unknown_items {
        push_unknown(&mut webhook.unknown, format!("{entity}[{action}]"));
    }
    Ok(())
}

/// `"0"`…`"999"` (ASCII digits only) → the index.
fn item_index(key: &str) -> Option<usize> {
    if key.is_empty() || key.len() > 4 || !key.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    key.parse::<usize>().ok().filter(|&i| i <= MAX_ITEM_INDEX)
}

/// Records an unknown key. Callers push each tree key at most once (tree keys are unique), so
/// no dedupe scan is needed — which keeps a body of 10 000 unknown keys linear.
fn push_unknown(unknown: &mut Vec<String>, mut name: String) {
    truncate(&mut name, MAX_QUOTED_KEY);
    unknown.push(name);
}

fn account_ref(account: &Map<'_>) -> Result<AccountRef, ParseError> {
    let id = match leaf(account, "id") {
        None => None,
        Some(v) => account_id(v)?,
    };
    Ok(AccountRef {
        id,
        subdomain: non_empty(leaf(account, "subdomain")),
    })
}

/// `account[id]` follows the one id rule ([`crate::kommo::id::parse_id`]: 1 to 15 digits, blanks
/// around allowed); blank is the same as absent.
fn account_id(value: &str) -> Result<Option<u64>, ParseError> {
    if value.trim_matches([' ', '\t', '\n', '\r']).is_empty() {
        return Ok(None);
    }
    crate::kommo::id::parse_id(value).map(Some).ok_or_else(|| {
        ParseError::new(
            "account[id]",
            format!(
                "expected a positive integer of at most 15 digits, got {}",
                quote(value)
            ),
        )
    })
}

#[derive(Clone, Copy)]
struct ItemPath<'p> {
    entity: &'p str,
    action: &'p str,
    index: &'p str,
}

impl ItemPath<'_> {
    fn item_key(&self) -> String {
        format!("{}[{}][{}]", self.entity, self.action, self.index)
    }

    fn key(&self, field: &str) -> String {
        format!("{}[{}][{}][{field}]", self.entity, self.action, self.index)
    }
}

/// One item's fields plus its path, for error keys.
struct Item<'t, 'a> {
    map: &'t Map<'a>,
    path: ItemPath<'t>,
}

impl<'t> Item<'t, '_> {
    /// The string value of a field (not trimmed; `None` if absent or not a scalar).
    fn str(&self, field: &str) -> Option<&'t str> {
        leaf(self.map, field)
    }

    /// The first non-empty value among several spellings, as an owned string.
    fn string(&self, fields: &[&str]) -> Option<String> {
        fields.iter().find_map(|f| non_empty(self.str(f)))
    }

    fn node(&self, field: &str) -> Option<&'t Node<'_>> {
        self.map.get(field)
    }

    /// A required number: missing, empty or not a number → error.
    fn u64_required(&self, field: &str) -> Result<u64, ParseError> {
        match self.str(field).map(str::trim) {
            None | Some("") => Err(ParseError::new(self.path.key(field), "missing")),
            Some(v) => parse_u64_strict(v, || self.path.key(field)),
        }
    }

    /// An optional number: absent or empty → `None`; present but not a number → error.
    fn u64_strict(&self, field: &str) -> Result<Option<u64>, ParseError> {
        match self.str(field).map(str::trim) {
            None | Some("") => Ok(None),
            Some(v) => parse_u64_strict(v, || self.path.key(field)).map(Some),
        }
    }

    /// The first parseable number among several spellings; garbage counts as absent.
    fn u64_lenient(&self, fields: &[&str]) -> Option<u64> {
        fields.iter().find_map(|f| self.str(f).and_then(parse_u64))
    }

    /// Whether `entity_type`/`element_type` says the item's entity is a lead.
    fn entity_is_lead(&self) -> bool {
        let entity_type = self.str("entity_type").map(str::trim);
        let element_type = self.str("element_type").map(str::trim);
        matches!(entity_type, Some(t) if t.eq_ignore_ascii_case("lead") || t.eq_ignore_ascii_case("leads") || t == "2")
            || element_type == Some("2")
    }
}

fn message(item: &Item<'_, '_>, outgoing_prefix: bool) -> Result<MessageItem, ParseError> {
    let id = match item.str("id").map(str::trim) {
        Some(id) if !id.is_empty() => id.to_owned(),
        _ => return Err(ParseError::new(item.path.key("id"), "missing")),
    };
    let contact_id = item.u64_required("contact_id")?;
    if contact_id == 0 {
        return Err(ParseError::new(
            item.path.key("contact_id"),
            "must be a positive id",
        ));
    }
    let talk_id = item.u64_strict("talk_id")?;
    let lead_id = match item.u64_strict("lead_id")? {
        Some(id) => Some(id),
        None if item.entity_is_lead() => match item.u64_strict("entity_id")? {
            Some(id) => Some(id),
            None => item.u64_strict("element_id")?,
        },
        None => None,
    };
    let created_at = match ["created_at", "timestamp"].iter().find_map(|&f| {
        item.str(f)
            .map(|v| (f, v.trim()))
            .filter(|(_, v)| !v.is_empty())
    }) {
        None => 0,
        Some((field, v)) => v.parse::<i64>().map_err(|_| {
            ParseError::new(
                item.path.key(field),
                format!("expected a unix timestamp, got {}", quote(v)),
            )
        })?,
    };
    let direction = if outgoing_prefix {
        Direction::Outgoing
    } else {
        match item.str("type").map(str::trim) {
            Some(t)
                if ["outgoing", "outbound", "out"]
                    .iter()
                    .any(|o| t.eq_ignore_ascii_case(o)) =>
            {
                Direction::Outgoing
            }
            _ => Direction::Incoming,
        }
    };
    Ok(MessageItem {
        id,
        chat_id: item.string(&["chat_id"]),
        talk_id,
        contact_id,
        lead_id,
        text: item.str("text").unwrap_or_default().to_owned(),
        created_at,
        direction,
        author: item.node("author").and_then(Node::as_map).and_then(author),
        attachment: item
            .node("attachment")
            .and_then(Node::as_map)
            .and_then(attachment),
        origin: item.string(&["origin"]),
    })
}

fn author(map: &Map<'_>) -> Option<Author> {
    let first = |fields: &[&str]| fields.iter().find_map(|f| non_empty(leaf(map, f)));
    let author = Author {
        id: first(&["id", "user_id"]),
        kind: first(&["type", "kind"]),
        name: first(&["name"]),
    };
    (author != Author::default()).then_some(author)
}

fn attachment(map: &Map<'_>) -> Option<AttachmentItem> {
    let first = |fields: &[&str]| fields.iter().find_map(|f| non_empty(leaf(map, f)));
    Some(AttachmentItem {
        link: first(&["link", "url"])?,
        kind: first(&["type", "kind"]).unwrap_or_else(|| "file".to_owned()),
        file_name: first(&["file_name", "filename", "name"]),
    })
}

fn talk(item: &Item<'_, '_>) -> WebhookEvent {
    let lead_id = item.u64_lenient(&["lead_id"]).or_else(|| {
        item.entity_is_lead()
            .then(|| item.u64_lenient(&["entity_id", "element_id"]))
            .flatten()
    });
    WebhookEvent::Talk {
        action: item.path.action.to_owned(),
        talk_id: item.u64_lenient(&["talk_id", "id"]),
        contact_id: item.u64_lenient(&["contact_id"]),
        chat_id: item.string(&["chat_id"]),
        lead_id,
        is_in_work: item.str("is_in_work").and_then(parse_bool),
        origin: item.string(&["origin"]),
    }
}

fn lead(item: &Item<'_, '_>) -> Result<WebhookEvent, ParseError> {
    let lead_id = item.u64_required("id")?;
    let mut contact_ids = Vec::new();
    for node in [
        item.node("contacts"),
        item.node("_embedded")
            .and_then(Node::as_map)
            .and_then(|m| m.get("contacts")),
        item.node("main_contact_id"),
        item.node("contact_id"),
    ]
    .into_iter()
    .flatten()
    {
        collect_ids(node, &mut contact_ids, 0);
    }
    Ok(WebhookEvent::Lead {
        action: item.path.action.to_owned(),
        lead_id,
        responsible_user_id: item.u64_strict("responsible_user_id")?,
        old_responsible_user_id: item.u64_strict("old_responsible_user_id")?,
        status_id: item.u64_strict("status_id")?,
        pipeline_id: item.u64_strict("pipeline_id")?,
        contact_ids,
    })
}

fn unsorted(item: &Item<'_, '_>) -> WebhookEvent {
    let nested = |group: &str, entity: &str| {
        item.node(group)
            .and_then(Node::as_map)
            .and_then(|m| m.get(entity))
            .and_then(first_id)
    };
    let lead_id = item
        .u64_lenient(&["lead_id"])
        .or_else(|| nested("data", "leads"))
        .or_else(|| nested("accept_result", "leads"))
        .or_else(|| item.node("leads").and_then(first_id));
    let contact_id = item
        .u64_lenient(&["contact_id"])
        .or_else(|| nested("data", "contacts"))
        .or_else(|| nested("accept_result", "contacts"))
        .or_else(|| item.node("contacts").and_then(first_id));
    WebhookEvent::Unsorted {
        action: item.path.action.to_owned(),
        lead_id,
        contact_id,
        raw_uid: item.string(&["uid"]),
    }
}

/// The first id in `5`, `{id: 5}`, `{0: 5}`, `{0: {id: 5}}`.
fn first_id(node: &Node<'_>) -> Option<u64> {
    let mut ids = Vec::new();
    collect_ids(node, &mut ids, 0);
    ids.first().copied()
}

/// Ids in `5`, `{id: 5}`, `{id: {0: 5, 1: 6}}`, `{0: 5, 1: {id: 6}}`; garbage is skipped.
fn collect_ids(node: &Node<'_>, out: &mut Vec<u64>, depth: usize) {
    if depth > 2 {
        return;
    }
    match node {
        Node::Leaf(v) => {
            if let Some(id) = parse_u64(v)
                && !out.contains(&id)
            {
                out.push(id);
            }
        }
        Node::Map(map) => {
            if let Some(id) = map.get("id") {
                collect_ids(id, out, depth + 1);
                return;
            }
            let mut numbered: Vec<(usize, &Node<'_>)> = map
                .iter()
                .filter_map(|(k, v)| item_index(k).map(|i| (i, v)))
                .collect();
            numbered.sort_by_key(|&(i, _)| i);
            for (_, child) in numbered {
                collect_ids(child, out, depth + 1);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Scalars
// ---------------------------------------------------------------------------------------------

fn leaf<'t>(map: &'t Map<'_>, field: &str) -> Option<&'t str> {
    map.get(field).and_then(Node::as_leaf)
}

fn non_empty(value: Option<&str>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty()).map(str::to_owned)
}

/// A JSON number as the form would carry it: whole numbers without a fraction (`5.0` is
/// `"5"`, as JSON Schema counts it an integer).
fn number_text(n: &serde_json::Number) -> String {
    match n.as_f64() {
        Some(f) if !n.is_u64() && !n.is_i64() && f.fract() == 0.0 && f.abs() < 9.0e15 => {
            format!("{f:.0}")
        }
        _ => n.to_string(),
    }
}

fn parse_u64(value: &str) -> Option<u64> {
    let v = value.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

fn parse_u64_strict(value: &str, key: impl FnOnce() -> String) -> Result<u64, ParseError> {
    parse_u64(value).ok_or_else(|| {
        ParseError::new(
            key(),
            format!("expected an unsigned integer, got {}", quote(value)),
        )
    })
}

fn parse_bool(value: &str) -> Option<bool> {
    let v = value.trim();
    if ["1", "true", "y", "yes", "on"]
        .iter()
        .any(|t| v.eq_ignore_ascii_case(t))
    {
        Some(true)
    } else if ["0", "false", "n", "no", "off"]
        .iter()
        .any(|f| v.eq_ignore_ascii_case(f))
    {
        Some(false)
    } else {
        None
    }
}

/// `value` in quotes, cut to [`MAX_QUOTED_VALUE`] bytes.
fn quote(value: &str) -> String {
    let mut v = value.to_owned();
    truncate(&mut v, MAX_QUOTED_VALUE);
    format!("{v:?}")
}

/// Cuts `s` to at most `max` bytes on a char boundary, marking the cut with `…`.
fn truncate(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push('…');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(body: &str) -> Vec<Vec<String>> {
        form_pairs(body.as_bytes())
            .map(|(k, _)| {
                let mut r = [(0, 0); MAX_DEPTH];
                let n = split_key(k, &mut r).unwrap_or(0);
                r[..n]
                    .iter()
                    .map(|&(a, b)| form_decode(&k[a..b]).into_owned())
                    .collect()
            })
            .collect()
    }

    /// The reference the borrowed parser must agree with: decode the whole key, then split it
    /// at its brackets (what the parser did before it borrowed).
    fn decode_then_split(body: &str) -> Vec<(Option<Vec<String>>, String)> {
        form_urlencoded::parse(body.as_bytes())
            .map(|(key, value)| {
                let segments = (|| {
                    let name_end = key.find('[').unwrap_or(key.len());
                    let mut out = vec![key[..name_end].to_owned()];
                    let mut pos = name_end;
                    while key[pos..].starts_with('[') {
                        let Some(len) = key[pos + 1..].find(']') else {
                            break;
                        };
                        if out.len() == MAX_DEPTH {
                            return None;
                        }
                        out.push(key[pos + 1..pos + 1 + len].to_owned());
                        pos += len + 2;
                    }
                    Some(out)
                })();
                (segments, value.into_owned())
            })
            .collect()
    }

    fn split_borrowed(body: &str) -> Vec<(Option<Vec<String>>, String)> {
        form_pairs(body.as_bytes())
            .map(|(k, v)| {
                let mut r = [(0, 0); MAX_DEPTH];
                let segments = split_key(k, &mut r).map(|n| {
                    r[..n]
                        .iter()
                        .map(|&(a, b)| form_decode(&k[a..b]).into_owned())
                        .collect()
                });
                (segments, form_decode(v).into_owned())
            })
            .collect()
    }

    proptest::proptest! {
        #[test]
        fn splitting_encoded_keys_agrees_with_decoding_first(
            pieces in proptest::collection::vec(proptest::sample::select(vec![
                "a", "id", "0", "[", "]", "%5B", "%5b", "%5D", "%5d", "%", "%5", "%%5B", "+",
                "%2B", "%20", "%C3%A1", "%C3", "%FF", "=", "&", "%3D", "%26", "é", "[x]",
            ]), 0..40),
        ) {
            let body = pieces.concat();
            proptest::prop_assert_eq!(split_borrowed(&body), decode_then_split(&body));
        }
    }

    #[test]
    fn a_body_without_escapes_is_parsed_without_copies() {
        let body = b"message[add][0][id]=m1&message[add][0][text]=hello";
        let (key, value) = form_pairs(body).next().unwrap();
        let mut r = [(0, 0); MAX_DEPTH];
        assert_eq!(split_key(key, &mut r), Some(4));
        assert!(matches!(
            form_decode(&key[r[3].0..r[3].1]),
            Cow::Borrowed("id")
        ));
        assert!(matches!(form_decode(value), Cow::Borrowed("m1")));
        assert!(matches!(form_decode(b"a%5B"), Cow::Owned(_)));
    }

    #[test]
    fn splits_bracket_keys() {
        assert_eq!(keys("a=1"), vec![vec!["a"]]);
        assert_eq!(keys("a[b][0]=1"), vec![vec!["a", "b", "0"]]);
        assert_eq!(keys("a%5Bb%5D=1"), vec![vec!["a", "b"]]);
        assert_eq!(keys("a[b=1"), vec![vec!["a"]]);
        assert_eq!(keys("a[b]x[c]=1"), vec![vec!["a", "b"]]);
        assert_eq!(keys("a[]=1"), vec![vec!["a", ""]]);
        assert_eq!(keys("a[b[c]]=1"), vec![vec!["a", "b[c"]]);
    }

    #[test]
    fn too_deep_key_is_rejected() {
        let deep = format!("a{}=1", "[x]".repeat(MAX_DEPTH));
        assert!(keys(&deep).iter().all(Vec::is_empty));
        let ok = format!("a{}=1", "[x]".repeat(MAX_DEPTH - 1));
        assert_eq!(keys(&ok)[0].len(), MAX_DEPTH);
    }

    #[test]
    fn later_keys_win() {
        let w = parse_form(b"account[id]=1&account[id]=2&account=x&account[id]=3").unwrap();
        assert_eq!(w.account.unwrap().id, Some(3));
    }

    #[test]
    fn a_value_never_replaces_a_deeper_key() {
        for body in ["a[b]=1&a=2", "a=2&a[b]=1", "a[b]=1&a[=2"] {
            let w = parse_form(body.as_bytes()).unwrap();
            assert!(w.shaped, "{body}");
            assert_eq!(w.unknown, ["a[b]"], "{body}");
        }
        for body in ["", "a=1", "a[=1", "[b]=1"] {
            assert!(!parse_form(body.as_bytes()).unwrap().shaped, "{body:?}");
        }
    }

    #[test]
    fn item_index_bounds() {
        assert_eq!(item_index("0"), Some(0));
        assert_eq!(item_index("999"), Some(999));
        assert_eq!(item_index("1000"), None);
        assert_eq!(item_index("+1"), None);
        assert_eq!(item_index(""), None);
        assert_eq!(item_index("٣"), None);
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        let mut s = "ação".repeat(100);
        truncate(&mut s, 4);
        assert_eq!(s, "aç…");
    }

    #[test]
    fn bools() {
        assert_eq!(parse_bool("1"), Some(true));
        assert_eq!(parse_bool("false"), Some(false));
        assert_eq!(parse_bool("maybe"), None);
    }
}
