//! HTTP on the wire, and nothing about revisions: the listener ([`server`]) with rouse's own
//! HTTP/1.1 server connection ([`downstream`]), the framing both HTTP/1.1 sides share
//! ([`h1`]) and their reading of head lines ([`head`]), TLS ([`tls`]), the upstream client and
//! its pools ([`client`]) with its own HTTP/1.1 connection ([`upstream`]), the response body
//! ([`body`]), the per-connection switch ([`cut`]), header rewriting ([`headers`]), a
//! request's fields as its client wrote them ([`lines`]), a flag one task waits for without a
//! lock ([`signal`]), the executor that runs HTTP/2's streams inside their connection's task
//! ([`inline`]), values kept per thread for reuse ([`kept`]), upgraded connections
//! ([`tunnel`]) and the page browsers get while a revision starts ([`waiting`]).

pub mod body;
pub mod client;
pub mod cut;
pub mod downstream;
pub mod h1;
pub mod head;
pub mod headers;
pub mod inline;
pub mod kept;
pub mod lines;
pub mod server;
pub mod signal;
pub mod tls;
pub mod tunnel;
pub mod upstream;
pub mod waiting;
