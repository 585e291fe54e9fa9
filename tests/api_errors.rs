//! REST API bad input: 4xx with the contract's error body, never a 5xx, and no
//! state change. Plus the unauthenticated endpoints outside /api/v1.
#![allow(clippy::unwrap_used)] // tests may unwrap (STYLE: not on request paths)

mod common;

use std::time::Duration;

use common::{Server, Transport};
use serde_json::{json, Value};

const JSON: Option<&str> = Some("application/json");

struct Case {
    what: &'static str,
    method: &'static str,
    path: String,
    key: Option<String>,
    ct: Option<&'static str>,
    body: Option<Vec<u8>>,
    want: &'static [u16],
}

fn case(
    what: &'static str,
    method: &'static str,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
    want: &'static [u16],
) -> Case {
    Case {
        what,
        method,
        path: path.to_string(),
        key: key.map(str::to_string),
        ct: body.as_ref().map(|_| "application/json"),
        body: body.map(|b| serde_json::to_vec(&b).unwrap()),
        want,
    }
}

fn raw_case(
    what: &'static str,
    path: &str,
    key: &str,
    ct: Option<&'static str>,
    body: &[u8],
    want: &'static [u16],
) -> Case {
    Case {
        what,
        method: "POST",
        path: path.to_string(),
        key: Some(key.to_string()),
        ct,
        body: Some(body.to_vec()),
        want,
    }
}

const BAD: &[u16] = &[400, 422];
const UNAUTH: &[u16] = &[401];

/// Every kind of bad request gets a 4xx with `{"error":{"code","message"}}`, and
/// afterwards nothing was pushed, stored, kicked or broadcast.
#[tokio::test]
async fn bad_requests_get_4xx_and_change_nothing() {
    let s = Server::start(&["--max-users", "5", "--max-body", "4096"]).await;
    let (mut victim, _) = s.login(Transport::WsJson, "v", "d").await;
    let key = s.api_key.clone();
    let k = Some(key.as_str());
    let good = json!({"users": ["v", "voff"], "data": "must not arrive"});

    let mut cases = vec![
        // Authentication.
        case(
            "no api key",
            "POST",
            "/api/v1/push/users",
            None,
            Some(good.clone()),
            UNAUTH,
        ),
        case(
            "wrong api key",
            "POST",
            "/api/v1/push/users",
            Some("wrong-key"),
            Some(good.clone()),
            UNAUTH,
        ),
        case(
            "empty api key",
            "POST",
            "/api/v1/push/users",
            Some(""),
            Some(good.clone()),
            UNAUTH,
        ),
        case(
            "no key: channel",
            "POST",
            "/api/v1/push/channel",
            None,
            Some(json!({"channel": "c", "data": 1})),
            UNAUTH,
        ),
        case(
            "no key: broadcast",
            "POST",
            "/api/v1/push/broadcast",
            None,
            Some(json!({"data": 1})),
            UNAUTH,
        ),
        case(
            "no key: kick",
            "DELETE",
            "/api/v1/users/v/connections",
            None,
            None,
            UNAUTH,
        ),
        case(
            "wrong key: kick",
            "DELETE",
            "/api/v1/users/v/connections",
            Some("nope"),
            None,
            UNAUTH,
        ),
        case("no key: stats", "GET", "/api/v1/stats", None, None, UNAUTH),
        case("no key: user", "GET", "/api/v1/users/v", None, None, UNAUTH),
        case("no key: task", "GET", "/api/v1/tasks/x", None, None, UNAUTH),
        case(
            "no key: openapi",
            "GET",
            "/api/v1/openapi.json",
            None,
            None,
            UNAUTH,
        ),
        // Bad JSON.
        raw_case(
            "syntax error",
            "/api/v1/push/users",
            &key,
            JSON,
            b"{not json",
            &[400],
        ),
        raw_case(
            "truncated json",
            "/api/v1/push/users",
            &key,
            JSON,
            br#"{"users":["v"],"data":"#,
            &[400],
        ),
        raw_case("empty body", "/api/v1/push/users", &key, JSON, b"", BAD),
        raw_case(
            "not utf-8",
            "/api/v1/push/users",
            &key,
            JSON,
            b"{\"users\":[\"\xff\xfe\"],\"data\":1}",
            BAD,
        ),
        raw_case(
            "no content type",
            "/api/v1/push/users",
            &key,
            None,
            good.to_string().as_bytes(),
            &[400, 415, 422],
        ),
        raw_case(
            "text/plain",
            "/api/v1/push/users",
            &key,
            Some("text/plain"),
            good.to_string().as_bytes(),
            &[400, 415, 422],
        ),
        raw_case(
            "channel syntax error",
            "/api/v1/push/channel",
            &key,
            JSON,
            b"{\"channel\":",
            &[400],
        ),
        raw_case(
            "broadcast syntax error",
            "/api/v1/push/broadcast",
            &key,
            JSON,
            b"]",
            &[400],
        ),
        // Wrong types / missing fields.
        case(
            "users is a string",
            "POST",
            "/api/v1/push/users",
            k,
            Some(json!({"users": "v", "data": 1})),
            BAD,
        ),
        case(
            "users are numbers",
            "POST",
            "/api/v1/push/users",
            k,
            Some(json!({"users": [1, 2], "data": 1})),
            BAD,
        ),
        case(
            "users missing",
            "POST",
            "/api/v1/push/users",
            k,
            Some(json!({"data": 1})),
            BAD,
        ),
        case(
            "data missing",
            "POST",
            "/api/v1/push/users",
            k,
            Some(json!({"users": ["v"]})),
            BAD,
        ),
        case(
            "store not bool",
            "POST",
            "/api/v1/push/users",
            k,
            Some(json!({"users": ["v"], "data": 1, "store": "yes"})),
            BAD,
        ),
        case(
            "ttl negative",
            "POST",
            "/api/v1/push/users",
            k,
            Some(json!({"users": ["v"], "data": 1, "ttl": -5})),
            BAD,
        ),
        case(
            "ttl a string",
            "POST",
            "/api/v1/push/users",
            k,
            Some(json!({"users": ["v"], "data": 1, "ttl": "1d"})),
            BAD,
        ),
        case(
            "body an array",
            "POST",
            "/api/v1/push/users",
            k,
            Some(json!([{"users": ["v"], "data": 1}])),
            BAD,
        ),
        case(
            "empty users",
            "POST",
            "/api/v1/push/users",
            k,
            Some(json!({"users": [], "data": 1})),
            BAD,
        ),
        case(
            "empty user id",
            "POST",
            "/api/v1/push/users",
            k,
            Some(json!({"users": [""], "data": 1})),
            BAD,
        ),
        case(
            "too many users (max 5)",
            "POST",
            "/api/v1/push/users",
            k,
            Some(json!({"users": ["v", "a", "b", "c", "d", "e"], "data": 1})),
            &[400, 413, 422],
        ),
        case(
            "channel missing",
            "POST",
            "/api/v1/push/channel",
            k,
            Some(json!({"data": 1})),
            BAD,
        ),
        case(
            "channel not a string",
            "POST",
            "/api/v1/push/channel",
            k,
            Some(json!({"channel": 5, "data": 1})),
            BAD,
        ),
        case(
            "empty channel",
            "POST",
            "/api/v1/push/channel",
            k,
            Some(json!({"channel": "", "data": 1})),
            BAD,
        ),
        case(
            "channel with space",
            "POST",
            "/api/v1/push/channel",
            k,
            Some(json!({"channel": "a b", "data": 1})),
            BAD,
        ),
        case(
            "channel with newline",
            "POST",
            "/api/v1/push/channel",
            k,
            Some(json!({"channel": "a\nb", "data": 1})),
            BAD,
        ),
        case(
            "channel 2000 chars",
            "POST",
            "/api/v1/push/channel",
            k,
            Some(json!({"channel": "c".repeat(2000), "data": 1})),
            BAD,
        ),
        case(
            "channel data missing",
            "POST",
            "/api/v1/push/channel",
            k,
            Some(json!({"channel": "c"})),
            BAD,
        ),
        case(
            "broadcast data missing",
            "POST",
            "/api/v1/push/broadcast",
            k,
            Some(json!({})),
            BAD,
        ),
        case(
            "history not bool",
            "POST",
            "/api/v1/push/channel",
            k,
            Some(json!({"channel": "c", "data": 1, "history": 3})),
            BAD,
        ),
        // Size limit.
        case(
            "body over --max-body 4096",
            "POST",
            "/api/v1/push/users",
            k,
            Some(json!({"users": ["v", "voff"], "data": "x".repeat(5000)})),
            &[413],
        ),
        case(
            "broadcast over --max-body",
            "POST",
            "/api/v1/push/broadcast",
            k,
            Some(json!({"data": "x".repeat(5000)})),
            &[413],
        ),
        // Not found / not allowed.
        case(
            "unknown task",
            "GET",
            "/api/v1/tasks/does-not-exist",
            k,
            None,
            &[404],
        ),
        case(
            "unknown route under api",
            "GET",
            "/api/v1/nope",
            k,
            None,
            &[404],
        ),
        case(
            "unknown route under api (POST)",
            "POST",
            "/api/v1/push/everyone",
            k,
            Some(json!({"data": 1})),
            &[404],
        ),
        case(
            "wrong method",
            "GET",
            "/api/v1/push/users",
            k,
            None,
            &[404, 405],
        ),
        case(
            "wrong method on kick",
            "POST",
            "/api/v1/users/v/connections",
            k,
            Some(json!({})),
            &[404, 405],
        ),
    ];
    // Unknown route outside the API: a 404 (no key needed).
    cases.push(case(
        "unknown route outside api",
        "GET",
        "/nope",
        None,
        None,
        &[404],
    ));

    let mut failures = Vec::new();
    for c in &cases {
        let (st, text) = s
            .raw(c.method, &c.path, c.key.as_deref(), c.ct, c.body.clone())
            .await;
        let body: Value = serde_json::from_str(&text).unwrap_or_else(|_| json!({ "_raw": text }));
        let what = format!("{} ({} {})", c.what, c.method, c.path);
        if let Err(e) = common::check_api_error(&what, st, &body, c.want) {
            failures.push(e);
        }
    }

    // Nothing changed: the victim is still connected and got nothing; voff has nothing queued.
    let u = s.user("v").await;
    assert_eq!(
        u["connections"].as_array().map(Vec::len),
        Some(1),
        "a refused kick kicked: {u}"
    );
    let sentinel = s.push_id(&["v", "voff"], json!("sentinel")).await;
    let m = victim.next_msg().await;
    assert_eq!(m["id"], sentinel, "a refused push was delivered: {m}");
    let (mut off, _) = s.login(Transport::Tcp, "voff", "d").await;
    let m = off.next_msg().await;
    assert_eq!(m["id"], sentinel, "a refused push was stored: {m}");
    assert!(off.ping_sync(1).await.is_empty());
    for other in ["a", "b", "c", "d", "e"] {
        let (mut c, _) = s.login(Transport::WsJson, other, "d").await;
        assert!(
            c.ping_sync(1).await.is_empty(),
            "refused push (too many users) stored for {other}"
        );
    }
    assert!(
        victim.ping_sync(1).await.is_empty(),
        "refused broadcast delivered"
    );

    assert!(
        failures.is_empty(),
        "{} bad-input case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Limits are inclusive: exactly --max-users users and a body just under --max-body are accepted.
#[tokio::test]
async fn limits_accept_the_maximum() {
    let s = Server::start(&["--max-users", "5", "--max-body", "4096"]).await;
    let r = s
        .push(json!({"users": ["a", "b", "c", "d", "e"], "data": "x".repeat(3000)}))
        .await;
    assert_eq!(r["stored"], 5, "{r}");
}

/// Correct requests answer the documented shapes.
#[tokio::test]
async fn push_answers_have_documented_shapes() {
    let s = Server::start(&[]).await;
    let r = s
        .push(json!({"users": ["x"], "data": null, "store": true, "ttl": 60}))
        .await;
    assert!(r["id"].is_i64(), "{r}");
    assert_eq!(r["delivered"], 0, "{r}");
    assert_eq!(r["stored"], 1, "{r}");
    let r = s.push_channel("ch", json!([1])).await;
    assert!(r["id"].is_i64() && r["delivered"] == 0, "{r}");
    let (st, r) = s
        .api("POST", "/push/broadcast", Some(json!({"data": "b"})))
        .await;
    assert_eq!(st, 202, "{r}");
    assert!(r["id"].is_i64() && r["task"].is_string(), "{r}");
    let t = s.wait_task(r["task"].as_str().unwrap()).await;
    assert_eq!(t["state"], "done", "{t}");
    assert_eq!(t["delivered"], 0, "{t}");
}

#[tokio::test]
async fn health_ready_metrics_openapi() {
    let s = Server::start(&[]).await;
    let (st, body) = s.raw("GET", "/healthz", None, None, None).await;
    assert_eq!(st, 200, "/healthz: {body}");
    let (st, body) = s.raw("GET", "/readyz", None, None, None).await;
    assert_eq!(st, 200, "/readyz: {body}");

    // Some activity, so counters exist.
    let (mut c, _) = s.login(Transport::WsJson, "m", "d").await;
    s.push_id(&["m"], json!(1)).await;
    c.next_msg().await;
    let (st, body) = s.raw("GET", "/metrics", None, None, None).await;
    assert_eq!(st, 200, "/metrics: {body}");
    assert!(
        body.lines().any(|l| l.starts_with("pushgate_")),
        "/metrics must contain pushgate_ samples in Prometheus text format:\n{body}"
    );
    assert!(
        body.contains("# TYPE pushgate_"),
        "/metrics must have # TYPE lines for pushgate_ metrics:\n{body}"
    );
    common::promtool_accepts(&body);
    dashboard_uses_served_metrics(&body);

    let (st, v) = s.api("GET", "/openapi.json", None).await;
    assert_eq!(st, 200, "{v}");
    // The same document without a key, outside the base.
    let (st, open) = s.raw("GET", "/openapi.json", None, None, None).await;
    assert_eq!(st, 200, "/openapi.json without a key: {open}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&open)
            .ok()
            .as_ref(),
        Some(&v),
        "the keyless document is the same"
    );
    let ver = v["openapi"]
        .as_str()
        .unwrap_or_else(|| panic!("openapi.json must have an \"openapi\" string: {v}"));
    assert!(ver.starts_with('3'), "OpenAPI 3 expected, got {ver}");
    let paths = v["paths"]
        .as_object()
        .unwrap_or_else(|| panic!("openapi.json without paths: {v}"));
    // What the server refuses, the schema refuses too (an empty channel or
    // user list, a ttl out of range).
    let schemas = &v["components"]["schemas"];
    let channel = &schemas["PushChannelReq"]["properties"]["channel"];
    assert_eq!(
        (&channel["minLength"], &channel["maxLength"]),
        (&json!(1), &json!(128)),
        "{channel}"
    );
    assert!(channel["pattern"].is_string(), "{channel}");
    assert_eq!(
        schemas["PushUsersReq"]["properties"]["users"]["minItems"],
        1
    );
    let ttl = &schemas["PushUsersReq"]["properties"]["ttl"];
    assert_eq!(
        (&ttl["minimum"], &ttl["maximum"]),
        (&json!(1), &json!(2592000)),
        "{ttl}"
    );
    for p in [
        "/push/users",
        "/push/channel",
        "/push/broadcast",
        "/stats",
        "/channels/{channel}/presence",
    ] {
        assert!(
            paths.keys().any(|k| k.ends_with(p)),
            "openapi.json lacks {p}: {:?}",
            paths.keys().collect::<Vec<_>>()
        );
    }
}

/// A slow HTTP client that never finishes its body does not block others.
#[tokio::test]
async fn half_sent_request_does_not_block_api() {
    use tokio::io::AsyncWriteExt;
    let s = Server::start(&[]).await;
    let mut slow = tokio::net::TcpStream::connect(s.http).await.unwrap();
    let head = format!(
        "POST /api/v1/push/users HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"users\":[",
        s.api_key
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    let (mut c, _) = s.login(Transport::WsJson, "hs", "d").await;
    let r = tokio::time::timeout(Duration::from_secs(5), s.push_users(&["hs"], json!(1)))
        .await
        .expect("API blocked by a half-sent request");
    assert_eq!(c.next_msg().await["id"], r["id"]);
    drop(slow);
}

/// Data nested far deeper than common JSON parsers allow: refused with a 4xx or
/// accepted, never a 5xx, and the server stays healthy.
#[tokio::test]
async fn deeply_nested_data_is_not_a_5xx() {
    let s = Server::start(&[]).await;
    let nested = format!(
        "{{\"users\":[\"deep\"],\"data\":{}{}}}",
        "[".repeat(1500),
        "]".repeat(1500)
    );
    let (st, text) = s
        .raw(
            "POST",
            "/api/v1/push/users",
            Some(&s.api_key),
            JSON,
            Some(nested.into_bytes()),
        )
        .await;
    assert!(
        st == 200 || st == 400 || st == 422,
        "1500-deep data: {st} {text}"
    );
    let (st, _) = s.raw("GET", "/healthz", None, None, None).await;
    assert_eq!(st, 200);
}

/// docs/grafana/pushgate-dashboard.json is a dashboard Grafana's file
/// provisioning loads (uid, title, panels with positions and Prometheus
/// targets), and every metric its queries name is one `/metrics` serves.
fn dashboard_uses_served_metrics(body: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs/grafana/pushgate-dashboard.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let d: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(d["uid"], "pushgate");
    assert!(
        d["title"].is_string() && d["schemaVersion"].is_u64(),
        "{path:?}"
    );
    let families: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|r| r.split(' ').next())
        .collect();
    // Families that appear only after the event they count.
    let after_event = ["pushgate_center_push_errors_total"];
    let panels = d["panels"].as_array().unwrap();
    assert!(panels.len() >= 8, "{} panels", panels.len());
    for p in panels {
        let title = p["title"].as_str().unwrap();
        assert!(p["gridPos"]["w"].as_u64().is_some(), "{title}: no gridPos");
        assert_eq!(p["datasource"]["type"], "prometheus", "{title}");
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(at) = rest.find("pushgate_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                let family = name.strip_suffix("_bucket").unwrap_or(&name);
                assert!(
                    families.contains(&family) || after_event.contains(&family),
                    "{title}: {family} is not served by /metrics"
                );
            }
        }
    }
}
