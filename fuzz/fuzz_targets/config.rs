//! Any text as a config file: parsing never panics, and every answer stays short (values are
//! quoted in part, however large).

#![no_main]

use libfuzzer_sys::fuzz_target;
use rouse::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = Config::parse(text) {
        for issue in e.issues() {
            assert!(
                issue.message.len() < 4096 && issue.path.len() < 4096,
                "an answer of {} bytes",
                issue.message.len() + issue.path.len()
            );
        }
    }
});
