//! The HTTP side of the clients: Connect unary calls in both codecs and plain GETs, over real
//! HTTP (reqwest) to the fixture's server.

use prost::Message;
use reqwest::StatusCode;
use serde_json::Value;

/// What connect-go's client (Grafana's backend, profilecli) puts on every unary call
/// (connectrpc.com/connect protocol_connect.go: content type `application/` + codec name, the
/// protocol version header, gzip accepted for the response).
pub const CONNECT_GO: [(&str, &str); 3] = [
    ("Connect-Protocol-Version", "1"),
    ("Accept-Encoding", "gzip"),
    ("User-Agent", "connect-go/1.18.1 (go1.24.4)"),
];

pub struct Reply {
    pub status: StatusCode,
    pub content_type: String,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{}: not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `POST {url}/{path}` with `body` of `content_type` and extra `headers`.
pub async fn post(
    url: &str,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> Reply {
    let mut req = reqwest::Client::new()
        .post(format!("{url}{path}"))
        .header("content-type", content_type)
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    reply(resp).await
}

pub async fn get(url: &str, path_and_query: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = reqwest::Client::new().get(format!("{url}{path_and_query}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    reply(req.send().await.unwrap()).await
}

async fn reply(resp: reqwest::Response) -> Reply {
    let status = resp.status();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = resp.bytes().await.unwrap().to_vec();
    Reply {
        status,
        content_type,
        body,
    }
}

/// A binary-proto Connect call that must succeed, decoded.
pub async fn proto<Req: Message, Resp: Message + Default>(
    url: &str,
    method_path: &str,
    req: &Req,
    headers: &[(&str, &str)],
) -> Resp {
    let r = post(
        url,
        method_path,
        "application/proto",
        req.encode_to_vec(),
        headers,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{method_path}: {}", r.text());
    assert_eq!(r.content_type, "application/proto", "{method_path}");
    Resp::decode(r.body.as_slice()).unwrap()
}

/// A JSON Connect call that must succeed.
pub async fn json(url: &str, method_path: &str, body: Value, headers: &[(&str, &str)]) -> Value {
    let r = post(
        url,
        method_path,
        "application/json",
        body.to_string().into_bytes(),
        headers,
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{method_path} {body}: {}",
        r.text()
    );
    r.json()
}

/// A JSON array of strings.
pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

/// Percent-encodes a query-string value.
pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
