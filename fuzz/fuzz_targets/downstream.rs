//! rouse's own HTTP/1.1 server connection (`http::downstream`): any bytes as a client's stream
//! of requests, read whole, cut in two at up to 65 points, and (for short inputs) one byte at a
//! time: no panic, and the same requests (heads, bodies, trailers) and the same verdict however
//! the bytes are cut, since a client decides how its bytes arrive.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rouse::http::downstream::read_all;

/// The limit of a head, small so that the fuzzer reaches it.
const MAX: usize = 4096;

fn read(data: &[u8], pieces: &[usize]) -> String {
    format!("{:?}", read_all(data, pieces, MAX))
}

fuzz_target!(|data: &[u8]| {
    let whole = read(data, &[]);
    for cut in (0..=data.len()).step_by((data.len() / 64).max(1)) {
        assert_eq!(read(data, &[cut]), whole, "cut at {cut}");
    }
    if data.len() <= 512 {
        assert_eq!(read(data, &vec![1; data.len()]), whole, "bytewise");
    }
});
