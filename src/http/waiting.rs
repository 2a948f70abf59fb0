//! The page a browser gets while a revision starts (`cold_start.waiting_page`): answered at
//! once, it says what is starting and reloads itself every [`RELOAD_SECONDS`]; each reload
//! either meets the ready revision (and the real page) or this page again, and keeps the
//! revision's demand alive meanwhile. No script and no outside assets: it works with
//! JavaScript off and air-gapped.

use bytes::Bytes;
use http::HeaderMap;
use http::header::ACCEPT;

/// Seconds between reloads, also sent as `Retry-After`.
pub const RELOAD_SECONDS: u32 = 2;

/// True for a request a browser makes for a page: a GET (or HEAD) that accepts `text/html`.
/// API clients, fetches of JSON and assets wait for the revision as before.
pub fn wanted(method: &http::Method, headers: &HeaderMap) -> bool {
    (method == http::Method::GET || method == http::Method::HEAD)
        && headers.get_all(ACCEPT).iter().any(|v| {
            v.as_bytes()
                .windows(9)
                .any(|w| w.eq_ignore_ascii_case(b"text/html"))
        })
}

/// Escapes text for HTML.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The page for revision `name`.
pub fn page(name: &str) -> Bytes {
    let name = escape(name);
    Bytes::from(format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="{RELOAD_SECONDS}">
<title>Starting {name}…</title>
<style>
body{{margin:0;min-height:100vh;display:flex;align-items:center;justify-content:center;
font:16px/1.5 system-ui,sans-serif;background:#f6f7f9;color:#1c2128}}
@media (prefers-color-scheme:dark){{body{{background:#0f1318;color:#e3e7ec}}}}
main{{text-align:center;padding:24px}}
.spin{{width:36px;height:36px;margin:0 auto 16px;border:4px solid #9aa5b1;border-top-color:#0b61c4;
border-radius:50%;animation:s 1s linear infinite}}
@keyframes s{{to{{transform:rotate(360deg)}}}}
@media (prefers-reduced-motion:reduce){{.spin{{animation:none}}}}
p{{color:#5f6b7a;margin:4px 0}}
</style></head>
<body><main><div class="spin" role="progressbar" aria-label="starting"></div>
<h1 id="starting">Starting <span id="revision">{name}</span>…</h1>
<p>It was idle and is waking up.<!--progress--> This page reloads by itself every {RELOAD_SECONDS} seconds and shows the site as soon as it is ready.</p>
</main></body></html>
"#
    ))
}

/// The page with how long the revision has been starting, when known: a start of minutes (a
/// large model loading) shows it is still going.
pub fn with_progress(page: &Bytes, so_far: Option<std::time::Duration>) -> Bytes {
    let Some(d) = so_far else {
        return page.clone();
    };
    let text = String::from_utf8_lossy(page);
    let s = d.as_secs();
    let said = match s {
        0..60 => format!(" Starting for {s} s."),
        _ => format!(" Starting for {} min {} s.", s / 60, s % 60),
    };
    Bytes::from(text.replacen("<!--progress-->", &said, 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_page_requests_from_browsers_get_it() {
        let h = |accept: &str| {
            let mut m = HeaderMap::new();
            m.insert(ACCEPT, accept.parse().unwrap());
            m
        };
        let browser = h("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8");
        assert!(wanted(&http::Method::GET, &browser));
        assert!(wanted(&http::Method::HEAD, &h("TEXT/HTML")));
        assert!(!wanted(&http::Method::POST, &browser), "a form post waits");
        assert!(!wanted(&http::Method::GET, &h("application/json")));
        assert!(!wanted(&http::Method::GET, &h("*/*")), "curl waits");
        assert!(!wanted(&http::Method::GET, &HeaderMap::new()));
    }

    #[test]
    fn progress_is_shown_when_known() {
        let p = page("web");
        assert_eq!(with_progress(&p, None), p);
        let later = with_progress(&p, Some(std::time::Duration::from_secs(125)));
        let text = std::str::from_utf8(&later).unwrap();
        assert!(
            text.contains("waking up. Starting for 2 min 5 s. This page"),
            "{text}"
        );
    }

    #[test]
    fn the_name_is_escaped() {
        let p = page("<b>&\"x'");
        let text = std::str::from_utf8(&p).unwrap();
        assert!(text.contains("Starting <span id=\"revision\">&lt;b&gt;&amp;&quot;x&#39;</span>"));
        assert!(!text.contains("<b>&"));
    }
}
