//! Settings: defaults, precedence, the config file for every subcommand.

use std::path::PathBuf;

use super::{Cli, Command, ParseError};

fn parse(args: &[&str]) -> Result<Cli, ParseError> {
    Cli::parse_from(std::iter::once("pushgate").chain(args.iter().copied()))
}

fn standalone(args: &[&str]) -> super::StandaloneArgs {
    match parse(args) {
        Ok(Cli {
            command: None,
            standalone,
        }) => standalone,
        Ok(Cli {
            command: Some(Command::Standalone(a)),
            ..
        }) => *a,
        other => panic!("not standalone: {other:?}"),
    }
}

fn file(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("p.toml");
    std::fs::write(&path, text).expect("write");
    let p = path.display().to_string();
    (dir, p)
}

fn file_error(args: &[&str]) -> String {
    match parse(args) {
        Err(ParseError::File(e)) => e.to_string(),
        Err(ParseError::Clap(e)) => e.to_string(),
        Ok(c) => panic!("accepted: {c:?}"),
    }
}

#[test]
fn defaults_are_the_documented_ones() {
    let c = standalone(&[]);
    assert_eq!(c.room.ws.to_string(), "127.0.0.1:7700");
    assert_eq!(c.room.tcp.to_string(), "127.0.0.1:7701");
    assert_eq!(c.quic.to_string(), "127.0.0.1:7702");
    assert_eq!(c.http.to_string(), "127.0.0.1:7780");
    assert!(c.room.tls_cert.is_none());
    assert_eq!(c.room.heartbeat, 30);
    assert_eq!(c.room.max_frame, 65_536);
    assert_eq!(c.data, PathBuf::from("data"));
    assert_eq!(c.process.net.settings(), crate::net::NetSettings::default());
    assert_eq!(c.center.queue_max, 1000);
    assert_eq!(c.center.queue_ttl, 86_400);
}

/// The room flags standalone and `pushgate room` share have one set of
/// defaults (they are one struct).
#[test]
fn room_defaults_are_shared() {
    let s = standalone(&[]).room;
    let Ok(Cli {
        command: Some(Command::Room(r)),
        ..
    }) = parse(&[
        "room",
        "--id",
        "1",
        "--registers",
        "a:1",
        "--token-secret",
        "s",
        "--saver",
        "b:2",
    ])
    else {
        panic!("room did not parse");
    };
    assert_eq!(format!("{s:?}"), format!("{:?}", r.room));
}

#[test]
fn example_file_loads() {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/../pushgate.example.toml");
    let c = standalone(&["--config", p]);
    assert_eq!(c.process.net.settings(), crate::net::NetSettings::default());
    assert_eq!(c.room.heartbeat, 30);
}

#[test]
fn net_settings_from_file_and_flags() {
    let (_d, p) = file("listen_backlog = 100\nhttp_header_timeout = 3\nhttp_max_conns = 7\n");
    let c = standalone(&["--config", &p, "--http-max-conns", "9"]);
    let net = c.process.net.settings();
    assert_eq!(net.backlog, 100);
    assert_eq!(net.http.header_timeout, std::time::Duration::from_secs(3));
    assert_eq!(net.http.max_conns, 9, "the flag wins over the file");
    assert!(parse(&["--http-header-timeout", "0"]).is_err());
    assert!(parse(&["--listen-backlog", "0"]).is_err());
}

#[test]
fn flags_win_over_file() {
    let (_d, p) = file("heartbeat = 5\nqueue_max = 7\nredis = \"redis://127.0.0.1:1/0\"\n");
    let c = standalone(&["--config", &p, "--heartbeat", "9"]);
    assert_eq!(c.room.heartbeat, 9);
    assert_eq!(c.center.queue_max, 7);
    assert_eq!(c.store.redis.as_deref(), Some("redis://127.0.0.1:1/0"));
}

/// A file value that starts with `-` is a value, not a flag.
#[test]
fn file_values_may_start_with_a_dash() {
    let (_d, p) = file("token_secret = \"--not-a-flag-0123456789\"\napi_key = \"-k-0123456789\"\n");
    let c = standalone(&["--config", &p]);
    assert_eq!(c.token_secret.as_deref(), Some("--not-a-flag-0123456789"));
    assert_eq!(c.api_key.as_deref(), Some("-k-0123456789"));
}

#[test]
fn unknown_file_keys_and_bad_values_are_refused() {
    let (_d, p) = file("hartbeat = 5\n");
    let e = file_error(&["--config", &p]);
    assert!(e.contains("hartbeat") && e.contains("unknown key"), "{e}");
    let (_d, p) = file("heartbeat = 0\n");
    let e = file_error(&["--config", &p]);
    assert!(e.contains("heartbeat"), "{e}");
    let (_d, p) = file("heartbeat = \"soon\"\n");
    assert!(parse(&["--config", &p]).is_err());
    let (_d, p) = file("config = \"other.toml\"\n");
    assert!(parse(&["--config", &p]).is_err(), "a file naming a file");
    let (_d, p) = file("[section]\nheartbeat = 5\n");
    assert!(parse(&["--config", &p]).is_err(), "tables are not settings");
    assert!(parse(&["--heartbeat", "0"]).is_err());
    assert!(parse(&["--heartbeat", &u64::MAX.to_string()]).is_err());
    assert!(parse(&["--redis", "http://x"]).is_err());
    assert!(
        parse(&["--queue-max", "100001"]).is_err(),
        "queue-max above the replay bound"
    );
    assert!(parse(&["--max-frame", "255"]).is_err());
    assert!(parse(&["--node-id", "256"]).is_err());
    assert!(parse(&["--api-key", "short"]).is_err());
    assert!(parse(&["--token-secret", "too-short"]).is_err());
    assert!(parse(&["--config", "/nonexistent/pushgate.toml"]).is_err());
}

/// Every server subcommand reads a config file with its own keys, and
/// refuses keys of another subcommand.
#[test]
fn every_subcommand_reads_a_config_file() {
    let (_d, p) = file(
        "id = 7\nregisters = \"127.0.0.1:1\"\ntoken_secret = \"s\"\nsaver = \"127.0.0.1:2\"\n\
         heartbeat = 12\ncluster_key = \"k\"\nreplay_overlap_ms = 10\nlog_format = \"json\"\n",
    );
    let Ok(Cli {
        command: Some(Command::Room(r)),
        ..
    }) = parse(&["room", "--config", &p])
    else {
        panic!("room with a config file");
    };
    assert_eq!((r.id, r.room.heartbeat, r.replay_overlap_ms), (7, 12, 10));
    assert_eq!(r.common.cluster_key, "k");
    assert_eq!(r.common.process.log_format, super::LogFormat::Json);
    assert_eq!(r.store.saver.as_deref(), Some("127.0.0.1:2"));

    let (_d, p) = file("lease_ms = 4000\nlisten = \"127.0.0.1:9\"\n");
    let Ok(Cli {
        command: Some(Command::Register(r)),
        ..
    }) = parse(&["register", "--config", &p, "--listen", "127.0.0.1:8"])
    else {
        panic!("register with a config file");
    };
    assert_eq!(r.lease_ms, 4000);
    assert_eq!(r.listen.to_string(), "127.0.0.1:8", "the flag wins");

    let (_d, p) = file("region = 3\ndata = \"ids\"\n");
    let Ok(Cli {
        command: Some(Command::Idgen(i)),
        ..
    }) = parse(&["idgen", "--config", &p])
    else {
        panic!("idgen with a config file");
    };
    assert_eq!((i.region, i.data), (3, PathBuf::from("ids")));

    let (_d, p) = file("api_key = \"0123456789\"\nregisters = \"a:1\"\nidgens = \"b:2\"\nredis = \"redis://c:3\"\nqueue_max = 5\n");
    let Ok(Cli {
        command: Some(Command::Center(c)),
        ..
    }) = parse(&["center", "--config", &p])
    else {
        panic!("center with a config file");
    };
    assert_eq!(c.center.queue_max, 5);

    let (_d, p) = file("lease_ms = 4000\n");
    let e = file_error(&["saver", "--config", &p]);
    assert!(
        e.contains("lease_ms"),
        "a register key in a saver's file: {e}"
    );
}

/// `pushgate token --config` takes `token_secret` and `data` from a
/// standalone file.
#[test]
fn token_reads_a_standalone_file() {
    let (_d, p) = file("token_secret = \"0123456789abcdef\"\nheartbeat = 5\n");
    let Ok(Cli {
        command: Some(Command::Token(t)),
        ..
    }) = parse(&["token", "--user", "u", "--config", &p])
    else {
        panic!("token");
    };
    assert_eq!(t.config.as_deref(), Some(std::path::Path::new(&p)));
}

/// Every flag of every subcommand is in docs/CONFIG.md, and every server
/// flag reads the variable the naming rule gives (`--max-frame`:
/// `PUSHGATE_MAX_FRAME`), so the document and the code cannot drift apart.
#[test]
fn config_md_lists_every_flag() {
    use clap::CommandFactory;
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/CONFIG.md"))
        .expect("docs/CONFIG.md");
    let cli = Cli::command();
    let mut missing = Vec::new();
    let mut misnamed = Vec::new();
    let commands = std::iter::once(&cli).chain(cli.get_subcommands());
    for cmd in commands {
        let name = cmd.get_name();
        for arg in cmd.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if matches!(long, "help" | "version") {
                continue;
            }
            if !mentions(&doc, long) {
                missing.push(format!("{name} --{long}"));
            }
            // dev-cluster and token are tools, not servers: no variables,
            // or only those of the server they read from.
            if matches!(name, "dev-cluster" | "token") {
                continue;
            }
            let want = format!("PUSHGATE_{}", long.to_uppercase().replace('-', "_"));
            let has = arg.get_env().and_then(|e| e.to_str()).map(str::to_owned);
            // A room's id is `PUSHGATE_ROOM_ID` (`PUSHGATE_ID` says too little).
            let ok = has.as_deref() == Some(want.as_str())
                || (name == "room" && long == "id" && has.as_deref() == Some("PUSHGATE_ROOM_ID"));
            if !ok {
                misnamed.push(format!("{name} --{long}: {has:?}, want {want}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "flags missing from docs/CONFIG.md: {missing:?}"
    );
    assert!(
        misnamed.is_empty(),
        "flags whose variable breaks the rule: {misnamed:?}"
    );
}

/// `doc` names `--long` as a whole flag (not as the start of a longer one).
fn mentions(doc: &str, long: &str) -> bool {
    let flag = format!("--{long}");
    doc.match_indices(&flag).any(|(i, _)| {
        doc[i + flag.len()..]
            .chars()
            .next()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '-'))
    })
}

#[test]
fn presence_channels_and_jwks_url_from_file_and_flags() {
    let (_d, p) = file(
        "presence_channels = \"room:*,lobby\"\ntoken_jwks_url = \"https://idp.example.com/jwks\"\n",
    );
    let c = standalone(&["--config", &p]);
    assert_eq!(c.room.presence_channels, ["room:*", "lobby"]);
    assert_eq!(
        c.room.token_jwks_url.as_ref().map(reqwest::Url::as_str),
        Some("https://idp.example.com/jwks")
    );
    assert_eq!(c.room.token_jwks_refresh, 300);
    let c = standalone(&["--presence-channels", "a:*", "--token-jwks-refresh", "5"]);
    assert_eq!(c.room.presence_channels, ["a:*"]);
    assert_eq!(c.room.token_jwks_refresh, 5);
    assert!(parse(&["--token-jwks-refresh", "0"]).is_err());
    assert!(parse(&["--token-jwks-url", "not a url"]).is_err());
}

#[test]
fn send_known_users_only_and_its_ttl_from_file_and_flags() {
    let c = standalone(&[]);
    assert!(!c.room.send_known_users_only);
    assert_eq!(c.room.known_user_ttl, 30 * 86_400);
    let (_d, p) = file("send_known_users_only = true\nknown_user_ttl = 3600\n");
    let c = standalone(&["--config", &p]);
    assert!(c.room.send_known_users_only);
    assert_eq!(c.room.known_user_ttl, 3600);
    let c = standalone(&["--send-known-users-only", "--known-user-ttl", "60"]);
    assert!(c.room.send_known_users_only);
    assert_eq!(c.room.known_user_ttl, 60);
    assert!(parse(&["--known-user-ttl", "0"]).is_err());
    assert!(parse(&["--known-user-ttl", "31536001"]).is_err());
}
