//! Fuzz target for the Kommo webhook parser: every entry point must return `Ok` or `Err` on any
//! input, never panic, overflow the stack or run away with time/memory (libFuzzer's
//! `-timeout`/`-rss_limit_mb` catch the last two).
#![no_main]

use conversa::kommo::webhook::{parse, parse_form, parse_json};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let form = parse_form(data);
    let json = parse_json(data);
    // `parse` must agree with the decoder the body's shape picks.
    let sniffed = parse(data);
    if matches!(data.iter().find(|b| !b.is_ascii_whitespace()), Some(b'{' | b'[')) {
        assert_eq!(sniffed, json);
    } else {
        assert_eq!(sniffed, form);
    }
    // Errors must render (they end up in logs).
    for e in [form.err(), json.err()].into_iter().flatten() {
        let _ = e.to_string();
    }
});
