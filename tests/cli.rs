//! The command line: startup output, defaults, generated keys, flags/env/file
//! precedence, `pushgate token`, exit codes, JSON logs.
#![allow(clippy::unwrap_used)] // tests may unwrap (STYLE: not on request paths)

mod common;

use std::time::Duration;

use common::{run_cli, spawn_raw, Server, Transport};
use proto::ClientFrame;
use serde_json::{json, Value};

fn is_addr_line(line: &str, prefix: &str) -> bool {
    line.strip_prefix(prefix)
        .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
        .is_some_and(|a| a.ip().is_loopback() && a.port() != 0)
}

#[tokio::test]
async fn startup_output_has_the_exact_form() {
    let s = Server::start(&[]).await;
    let l = &s.startup;
    assert_eq!(
        l.len(),
        8,
        "expected exactly 8 stdout lines up to ready, got {l:?}"
    );
    assert!(
        is_addr_line(&l[0], "ws listening on "),
        "line 1 must be `ws listening on ADDR`: {l:?}"
    );
    assert!(
        is_addr_line(&l[1], "tcp listening on "),
        "line 2 must be `tcp listening on ADDR`: {l:?}"
    );
    assert!(
        is_addr_line(&l[2], "quic listening on "),
        "line 3 must be `quic listening on ADDR`: {l:?}"
    );
    assert!(
        is_addr_line(&l[3], "http listening on "),
        "line 4 must be `http listening on ADDR`: {l:?}"
    );
    assert!(
        l[4].strip_prefix("tls fingerprint: sha256:")
            .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit())),
        "line 5 must be `tls fingerprint: sha256:<64 hex>`: {l:?}"
    );
    assert!(
        l[5].starts_with("api key: ") && l[5].len() > "api key: ".len() + 8,
        "line 6: {l:?}"
    );
    assert!(
        l[6].starts_with("token secret: ") && l[6].len() > "token secret: ".len() + 8,
        "line 7: {l:?}"
    );
    assert_eq!(l[7], "ready", "{l:?}");
    assert_ne!(s.api_key, s.secret, "api key and token secret must differ");
    // Kept in the data dir.
    let dir = s.data_dir();
    let key = std::fs::read_to_string(dir.join("api_key")).expect("DATA/api_key");
    let secret = std::fs::read_to_string(dir.join("token_secret")).expect("DATA/token_secret");
    assert_eq!(key.trim(), s.api_key);
    assert_eq!(secret.trim(), s.secret);
    // The printed ones work.
    let (_c, ok) = s.login(Transport::WsJson, "who", "d").await;
    assert_eq!(ok["user"], "who");
    s.stats().await;
}

#[tokio::test]
async fn generated_keys_are_kept_across_restart() {
    let mut s = Server::start(&[]).await;
    let (key, secret) = (s.api_key.clone(), s.secret.clone());
    let old_token = s.token("keep");
    let st = s.stop().await;
    assert_eq!(st.code(), Some(0), "{}", s.stderr());
    s.restart().await;
    assert_eq!(s.api_key, key, "api key changed across restart");
    assert_eq!(s.secret, secret, "token secret changed across restart");
    let mut c = s.connect(Transport::Tcp).await;
    let ok = c.auth(&old_token, None, None).await;
    assert_eq!(ok["user"], "keep");
    s.stats().await;
    // Two fresh data dirs get different keys.
    let other = Server::start(&[]).await;
    assert_ne!(other.api_key, key, "api keys must be random per data dir");
    assert_ne!(
        other.secret, secret,
        "token secrets must be random per data dir"
    );
}

#[tokio::test]
async fn explicit_keys_are_used() {
    let s = Server::start(&[
        "--api-key",
        "flag-key-123",
        "--token-secret",
        "flag-secret-456-abcdefgh",
    ])
    .await;
    assert_eq!(
        s.api_key, "flag-key-123",
        "printed/used api key: {:?}",
        s.startup
    );
    assert_eq!(
        s.secret, "flag-secret-456-abcdefgh",
        "printed/used token secret: {:?}",
        s.startup
    );
    let (st, _) = s
        .raw("GET", "/api/v1/stats", Some("flag-key-123"), None, None)
        .await;
    assert_eq!(st, 200);
    let (st, _) = s
        .raw("GET", "/api/v1/stats", Some("something-else"), None, None)
        .await;
    assert_eq!(st, 401);
    let mut c = s.connect(Transport::WsJson).await;
    c.auth(
        &common::mint(
            "flag-secret-456-abcdefgh",
            "f",
            None,
            None,
            common::now_secs() + 60,
        ),
        None,
        None,
    )
    .await;
}

/// Flags win over the environment, the environment over the TOML file.
#[tokio::test]
async fn flags_over_env_over_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pushgate.toml");
    std::fs::write(
        &file,
        "api_key = \"file-key\"\nheartbeat = 11\ntoken_secret = \"file-secret-0123456789\"\nmax_users = 2\n",
    )
    .unwrap();
    let f = file.display().to_string();

    // File only.
    let s = Server::start(&["--config", &f]).await;
    let (st, _) = s
        .raw("GET", "/api/v1/stats", Some("file-key"), None, None)
        .await;
    assert_eq!(st, 200, "api_key from the config file not used");
    let mut c = s.connect(Transport::WsJson).await;
    let ok = c
        .auth(
            &common::mint(
                "file-secret-0123456789",
                "x",
                None,
                None,
                common::now_secs() + 60,
            ),
            None,
            None,
        )
        .await;
    assert_eq!(ok["heartbeat"], 11, "heartbeat from the config file: {ok}");
    let (st, _) = s
        .api(
            "POST",
            "/push/users",
            Some(json!({"users": ["a", "b", "c"], "data": 1})),
        )
        .await;
    assert!(
        (400..500).contains(&st),
        "max_users = 2 from file not applied: {st}"
    );
    drop(s);

    // Env over file.
    let s = Server::start_env(
        &["--config", &f],
        &[
            ("PUSHGATE_HEARTBEAT", "9"),
            ("PUSHGATE_API_KEY", "env-key-123"),
        ],
    )
    .await;
    let (st, _) = s
        .raw("GET", "/api/v1/stats", Some("env-key-123"), None, None)
        .await;
    assert_eq!(st, 200, "PUSHGATE_API_KEY must win over the file");
    let mut c = s.connect(Transport::WsJson).await;
    let ok = c
        .auth(
            &common::mint(
                "file-secret-0123456789",
                "x",
                None,
                None,
                common::now_secs() + 60,
            ),
            None,
            None,
        )
        .await;
    assert_eq!(
        ok["heartbeat"], 9,
        "PUSHGATE_HEARTBEAT must win over the file: {ok}"
    );
    drop(s);

    // Flag over env.
    let s = Server::start_env(
        &[
            "--config",
            &f,
            "--heartbeat",
            "5",
            "--api-key",
            "flag-key-123",
        ],
        &[
            ("PUSHGATE_HEARTBEAT", "9"),
            ("PUSHGATE_API_KEY", "env-key-123"),
        ],
    )
    .await;
    let (st, _) = s
        .raw("GET", "/api/v1/stats", Some("flag-key-123"), None, None)
        .await;
    assert_eq!(st, 200, "--api-key must win over PUSHGATE_API_KEY");
    let (st, _) = s
        .raw("GET", "/api/v1/stats", Some("env-key-123"), None, None)
        .await;
    assert_eq!(st, 401, "env api key must be overridden by the flag");
    let mut c = s.connect(Transport::WsJson).await;
    let ok = c
        .auth(
            &common::mint(
                "file-secret-0123456789",
                "x",
                None,
                None,
                common::now_secs() + 60,
            ),
            None,
            None,
        )
        .await;
    assert_eq!(
        ok["heartbeat"], 5,
        "--heartbeat must win over PUSHGATE_HEARTBEAT: {ok}"
    );
}

/// `pushgate` with no arguments: standalone, ./data, default ports. And `pushgate standalone` is the same.
#[tokio::test]
async fn plain_pushgate_uses_defaults() {
    let cwd = tempfile::tempdir().unwrap();
    let (mut child, lines, stderr) = spawn_raw(&[], &[], Some(cwd.path())).await;
    let want = [
        "ws listening on 127.0.0.1:7700",
        "tcp listening on 127.0.0.1:7701",
        "quic listening on 127.0.0.1:7702",
        "http listening on 127.0.0.1:7780",
    ];
    for w in want {
        assert!(
            lines.iter().any(|l| l == w),
            "expected `{w}` in {lines:?} (default ports; is something else on them?)\n{}",
            stderr.lock()
        );
    }
    assert!(
        cwd.path().join("data").join("api_key").is_file(),
        "./data/api_key not created"
    );
    assert!(
        cwd.path().join("data").join("token_secret").is_file(),
        "./data/token_secret not created"
    );
    common::sigterm_pid(child.id().unwrap());
    let st = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("exit")
        .unwrap();
    assert_eq!(st.code(), Some(0), "{}", stderr.lock());

    // `standalone` subcommand with the same data dir: same keys.
    let key = common::startup_value(&lines, "api key: ");
    let data = cwd.path().join("data").display().to_string();
    let (_c2, lines2, _) = spawn_raw(
        &[
            "standalone",
            "--data",
            &data,
            "--ws",
            "127.0.0.1:0",
            "--tcp",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
        ],
        &[],
        None,
    )
    .await;
    assert_eq!(lines2.last().map(String::as_str), Some("ready"));
    assert_eq!(
        common::startup_value(&lines2, "api key: "),
        key,
        "standalone with the same data dir must reuse the key"
    );
}

fn claims(token: &str) -> Value {
    jsonwebtoken::dangerous::insecure_decode_claims::<Value>(token)
        .unwrap_or_else(|e| panic!("`pushgate token` output is not a JWT ({e}): {token:?}"))
}

#[tokio::test]
async fn token_subcommand_mints_a_working_jwt() {
    let s = Server::start(&[]).await;
    let data = s.data_dir().display().to_string();
    let (code, out, err) = run_cli(
        &[
            "token",
            "--user",
            "tok-user",
            "--channels",
            "a,b*",
            "--device",
            "dev1",
            "--data",
            &data,
        ],
        &[],
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(code, Some(0), "pushgate token failed: {err}");
    let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "`pushgate token` must print exactly one line, got {out:?}"
    );
    let token = lines[0].trim();
    let c = claims(token);
    assert_eq!(c["sub"], "tok-user", "{c}");
    assert_eq!(c["dev"], "dev1", "{c}");
    assert_eq!(c["channels"], json!(["a", "b*"]), "{c}");
    let exp = c["exp"]
        .as_u64()
        .unwrap_or_else(|| panic!("exp must be an integer: {c}"));
    let now = common::now_secs();
    assert!(
        exp > now + 3500 && exp <= now + 3700,
        "default ttl 3600: exp {exp}, now {now}"
    );

    let mut cl = s.connect(Transport::WsJson).await;
    let ok = cl.auth(token, None, None).await;
    assert_eq!(ok["user"], "tok-user");
    cl.sub("a").await;
    cl.sub("bxyz").await;
    cl.send(&ClientFrame::Sub {
        seq: Some(3),
        channel: "c".into(),
        last_id: None,
        presence: false,
    })
    .await;
    let v = cl.next().await;
    assert_eq!(v["code"], "channel_forbidden", "{v}");
    s.wait_online("tok-user", true).await;
    let u = s.user("tok-user").await;
    assert_eq!(
        u["connections"][0]["device"], "dev1",
        "device from the token: {u}"
    );

    // --token-secret and --ttl; the env variable works too.
    let (code, out, err) = run_cli(
        &[
            "token",
            "--user",
            "x",
            "--ttl",
            "60",
            "--token-secret",
            "sek-0123456789abcdef",
        ],
        &[],
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    let c = claims(out.trim());
    let exp = c["exp"].as_u64().unwrap();
    assert!(
        exp > now + 30 && exp <= now + 120,
        "--ttl 60: exp {exp} now {now}"
    );
    assert!(
        c.get("channels").is_none() || c["channels"].is_null(),
        "no --channels: no claim: {c}"
    );
    let s2 = Server::start(&["--token-secret", "sek-0123456789abcdef"]).await;
    let mut cl = s2.connect(Transport::Tcp).await;
    assert_eq!(cl.auth(out.trim(), None, None).await["user"], "x");
    let (code, out, err) = run_cli(
        &["token", "--user", "y"],
        &[("PUSHGATE_TOKEN_SECRET", "sek-0123456789abcdef")],
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    let mut cl = s2.connect(Transport::WsBin).await;
    assert_eq!(cl.auth(out.trim(), None, None).await["user"], "y");
    // A token minted with another secret is refused.
    let mut cl = s.connect(Transport::WsJson).await;
    cl.send(&ClientFrame::Auth {
        seq: None,
        token: out.trim().to_string(),
        last_id: None,
        device: None,
    })
    .await;
    cl.expect_close(4001, Duration::from_secs(5)).await;
}

/// What a bad-config case is: name, extra flags, environment.
type BadCase<'a> = (&'a str, Vec<&'a str>, Vec<(&'a str, &'a str)>);

#[tokio::test]
async fn bad_config_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let bad_toml = dir.path().join("bad.toml");
    std::fs::write(&bad_toml, "heartbeat = [unclosed").unwrap();
    let wrong_type = dir.path().join("wrong.toml");
    std::fs::write(&wrong_type, "heartbeat = \"soon\"\n").unwrap();
    let bt = bad_toml.display().to_string();
    let wt = wrong_type.display().to_string();
    let base = [
        "--data",
        d.as_str(),
        "--ws",
        "127.0.0.1:0",
        "--tcp",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
    ];
    let cases: Vec<BadCase<'_>> = vec![
        ("bad ws address", vec!["--ws", "not-an-address"], vec![]),
        ("bad heartbeat", vec!["--heartbeat", "abc"], vec![]),
        ("bad log format", vec!["--log-format", "xml"], vec![]),
        (
            "missing config file",
            vec!["--config", "/nonexistent/pushgate.toml"],
            vec![],
        ),
        ("invalid toml", vec!["--config", &bt], vec![]),
        ("wrong type in toml", vec!["--config", &wt], vec![]),
        ("unknown flag", vec!["--no-such-flag"], vec![]),
        (
            "bad env value",
            vec![],
            vec![("PUSHGATE_MAX_FRAME", "lots")],
        ),
        ("bad redis url", vec!["--redis", "not a url"], vec![]),
    ];
    let mut failures: Vec<String> = Vec::new();
    for (what, extra, env) in cases {
        // The case's own flags replace the base ones of the same name.
        let mut args: Vec<&str> = Vec::new();
        for pair in base.chunks(2) {
            if !extra.contains(&pair[0]) {
                args.extend_from_slice(pair);
            }
        }
        args.extend(extra.iter().copied());
        let (code, out, err) = run_cli(&args, &env, Duration::from_secs(10)).await;
        if code != Some(64) {
            failures.push(format!(
                "{what}: expected exit 64, got {code:?}; stderr: {}",
                err.trim()
            ));
        }
        assert!(
            !err.trim().is_empty(),
            "{what}: bad config must be explained on stderr"
        );
        assert!(
            !out.contains("ready"),
            "{what}: printed ready with bad config: {out}"
        );
    }
    let (code, _, err) = run_cli(&["token"], &[], Duration::from_secs(10)).await;
    if code != Some(64) {
        failures.push(format!(
            "`pushgate token` without --user: expected exit 64, got {code:?}; stderr: {}",
            err.trim()
        ));
    }
    let (code, out, _) = run_cli(&["--help"], &[], Duration::from_secs(10)).await;
    assert_eq!(code, Some(0), "--help must exit 0");
    assert!(
        out.contains("--heartbeat") && out.contains("--redis"),
        "--help lists the flags: {out}"
    );
    assert!(
        failures.is_empty(),
        "{} bad-config case(s) wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn log_format_json_writes_json_lines_on_stderr() {
    let mut s = Server::start(&["--log-format", "json"]).await;
    let (mut c, _) = s.login(Transport::WsJson, "logs", "d").await;
    s.push_id(&["logs"], json!(1)).await;
    c.next_msg().await;
    let mut bad = s.connect(Transport::Tcp).await;
    bad.send_tcp_body(&[0xff, 0xff]).await;
    bad.closed(Duration::from_secs(5)).await;
    let st = s.stop().await;
    assert_eq!(st.code(), Some(0));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let err = s.stderr();
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        !lines.is_empty(),
        "--log-format json logged nothing on stderr"
    );
    for l in &lines {
        let v: Value = serde_json::from_str(l)
            .unwrap_or_else(|e| panic!("stderr line is not JSON ({e}): {l}"));
        assert!(v.is_object(), "stderr line is not a JSON object: {l}");
    }
    // And stdout kept only the startup lines.
    assert!(
        s.startup.iter().all(|l| !l.starts_with('{')),
        "logs on stdout: {:?}",
        s.startup
    );
}
