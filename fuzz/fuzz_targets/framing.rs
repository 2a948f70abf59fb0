//! Any bytes as a client's HTTP/1.1 stream through the framing check (`http::strict`), read
//! whole and cut in two at up to 65 points: no panic, and the same verdict however the bytes
//! are cut, since a client decides how its bytes arrive.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rouse::http::strict::Framing;

/// The verdict on `parts` read one after another, with its index in the whole.
fn verdict(parts: &[&[u8]]) -> Option<(usize, rouse::http::strict::Broken)> {
    let mut f = Framing::default();
    let mut offset = 0;
    for p in parts {
        if let Some((k, why)) = f.scan(p) {
            assert!(k < p.len(), "an index inside the read");
            return Some((offset + k, why));
        }
        offset += p.len();
    }
    None
}

fuzz_target!(|data: &[u8]| {
    let whole = verdict(&[data]);
    for cut in (0..=data.len()).step_by((data.len() / 64).max(1)) {
        let (a, b) = data.split_at(cut);
        assert_eq!(verdict(&[a, b]), whole, "cut at {cut}");
    }
});
