//! `pushgate center`: the REST API over the cluster's registers, idgens,
//! store and rooms.

use std::time::Duration;

use anyhow::Context;
use idgen::LeasedIds;
use register::ClusterDirectory;
use tracing::{info, warn};

use super::rooms::ClusterRooms;
use super::{announce, client_config, connect_store};
use crate::api::ApiNode;
use crate::settings::CenterArgs;

/// Ids leased from an idgen at a time.
pub(super) const ID_BLOCK: u32 = 4096;
/// A leased block older than this is dropped, so ids stay close to the
/// clock (see `--replay-overlap-ms` of rooms).
pub(super) const ID_BLOCK_AGE: Duration = Duration::from_millis(250);

/// Runs a center until SIGTERM or SIGINT.
///
/// # Errors
/// Start-up failures.
pub(crate) async fn run(args: CenterArgs) -> anyhow::Result<()> {
    let shutdown = crate::signal::Shutdown::install().context("install signal handlers")?;
    let key = &args.common.cluster_key;
    let cfg = client_config(key);
    let dir = ClusterDirectory::new(link::split_addrs(&args.registers), cfg.clone());
    let ids = LeasedIds::new(
        link::split_addrs(&args.idgens),
        cfg.clone(),
        ID_BLOCK,
        ID_BLOCK_AGE,
    );
    let store = connect_store(&args.store, cfg).await?;
    let rooms = ClusterRooms::new(dir.clone(), key);
    let center = center::Center::new(
        args.center.center_config(args.api_key.clone()),
        center::CenterDeps {
            dir: dir.clone(),
            store,
            ids,
            rooms,
        },
    );
    // How long this center's calls to registers, idgens, savers and rooms take.
    center.add_metrics_source(std::sync::Arc::new(link::stats::render));
    if let Err(e) = dir.refresh().await {
        warn!(error = %e, "no register answered yet; rooms appear once one does");
    }
    let api = ApiNode::start(center, args.http)?;
    announce(&[format!("http listening on {}", api.addr())])?;
    info!(http = %api.addr(), "center up");

    shutdown.wait().await;
    info!("shutting down");
    // Every push already accepted is stored and delivered before exit.
    api.stop().await;
    info!("stopped");
    Ok(())
}
