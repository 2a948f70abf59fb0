//! A backend with two ports, as KServe's model servers have (REST on one, gRPC on another):
//! HTTP/1.1 on `PORT` answers `rest PID`, and h2c on `--grpc PORT` (else `GRPC_PORT`) answers
//! each unary gRPC call
//! with one message, `grpc PID:REQUEST`, and `grpc-status: 0`, both on `HOST` (default
//! 127.0.0.1). The tests start it as one process of a scaled revision, and as a pod, through
//! rouse, to show that both ports are one backend.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use tokio::net::TcpListener;

fn port(var: &str) -> u16 {
    std::env::var(var)
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{var} must be a port"))
}

fn frame(msg: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + msg.len());
    b.put_u8(0);
    b.put_u32(u32::try_from(msg.len()).unwrap_or(u32::MAX));
    b.put_slice(msg);
    b.freeze()
}

async fn rest(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from(format!(
        "rest {}",
        std::process::id()
    )))))
}

type Grpc =
    StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

async fn grpc(req: Request<Incoming>) -> Result<Response<Grpc>, Infallible> {
    let mut body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let msg = if body.len() >= 5 {
        body.advance(5);
        String::from_utf8_lossy(&body).into_owned()
    } else {
        String::new()
    };
    let reply = format!("grpc {}:{msg}", std::process::id());
    let mut trailers = HeaderMap::new();
    trailers.insert(
        "grpc-status",
        "0".parse().unwrap_or_else(|_| unreachable!()),
    );
    let frames = vec![
        Ok(Frame::data(frame(reply.as_bytes()))),
        Ok(Frame::trailers(trailers)),
    ];
    let mut res = Response::new(StreamBody::new(futures_util::stream::iter(frames)));
    res.headers_mut().insert(
        "content-type",
        "application/grpc"
            .parse()
            .unwrap_or_else(|_| unreachable!()),
    );
    Ok(res)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // A pod's own address, or loopback.
    let host = std::env::var("HOST").unwrap_or_else(|_| "127.0.0.1".to_owned());
    let rest_l = TcpListener::bind((host.as_str(), port("PORT")))
        .await
        .expect("bind PORT");
    // The command line's port, so that rouse's `{grpc_port}` in arguments is what is used.
    let args: Vec<String> = std::env::args().collect();
    let grpc_port = args
        .iter()
        .position(|a| a == "--grpc")
        .and_then(|i| args.get(i + 1))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| port("GRPC_PORT"));
    let grpc_l = TcpListener::bind((host.as_str(), grpc_port))
        .await
        .expect("bind GRPC_PORT");
    tokio::spawn(async move {
        while let Ok((s, _)) = grpc_l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), hyper::service::service_fn(grpc)),
            );
        }
    });
    while let Ok((s, _)) = rest_l.accept().await {
        let _ = s.set_nodelay(true);
        tokio::spawn(
            hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(s), hyper::service::service_fn(rest)),
        );
    }
}
