//! Prints what a user receives: `cargo run -p pushgate-client --example listen -- URL... `
//! with the token in `PUSHGATE_TOKEN` (e.g. `pushgate token --user alice --channels news`)
//! and, optionally, channels to subscribe to in `PUSHGATE_CHANNELS` (comma-separated)
//! and a certificate fingerprint to trust in `PUSHGATE_PIN` (`sha256:<hex>`).

use std::time::Duration;

use pushgate_client::{Client, Event, Fingerprint};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let urls: Vec<String> = std::env::args().skip(1).collect();
    let mut builder = Client::builder(urls)
        // Called before every connection: return a fresh token when the old one expired.
        .token_provider(|| async { Ok(std::env::var("PUSHGATE_TOKEN")?) })
        .device("listen-example")
        .auto_ack(true)
        .backoff(Duration::from_millis(500), Duration::from_secs(30));
    if let Ok(pin) = std::env::var("PUSHGATE_PIN") {
        builder = builder.tls_pin(Fingerprint::parse(&pin)?);
    }
    for channel in std::env::var("PUSHGATE_CHANNELS")
        .unwrap_or_default()
        .split(',')
        .filter(|c| !c.is_empty())
    {
        builder = builder.subscribe(channel);
    }
    let (client, mut events) = builder.start()?;
    loop {
        let event = tokio::select! {
            e = events.recv() => e,
            _ = tokio::signal::ctrl_c() => break,
        };
        let Some(event) = event else { break };
        match event {
            Event::Connected(c) => println!(
                "connected to {} as {} (resumed from {:?})",
                c.url, c.user, c.resumed_from
            ),
            Event::Message(m) => println!("#{} {:?}: {}", m.id, m.channel, m.text()),
            Event::Disconnected(d) => println!(
                "lost ({:?} {}), retry in {:?}",
                d.code, d.reason, d.retry_in
            ),
            Event::ConnectFailed {
                url,
                error,
                retry_in,
            } => println!("{url}: {error}, retry in {retry_in:?}"),
            other => println!("{other:?}"),
        }
    }
    client.close().await;
    Ok(())
}
