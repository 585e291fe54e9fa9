//! Properties of the services' link messages: the requests a register, a
//! saver, an idgen and a room decode from their link peers, and the answers
//! their clients decode (wrapped in link's reply). Used by the `link_wire`
//! fuzz target only: no crate of the workspace can reach both postcard and
//! all four services, so the stable smoke test (`link/tests/fuzz_smoke.rs`)
//! covers the framing, the hello and the welcome with generic bodies.
#![allow(dead_code)]

use idgen::remote::{IdgenReq, IdgenResp};
use register::remote::{RegisterReq, RegisterResp};
use room::remote::{RoomReq, RoomResp};
use saver::remote::{SaverReq, SaverResp};

use crate::link_checks::{round_trip, Reply};

/// Every request and answer type of register, saver, idgen and room on `body`.
pub(crate) fn service_bodies(body: &[u8]) -> bool {
    let mut accepted = round_trip::<RegisterReq>(body);
    accepted |= round_trip::<Reply<RegisterResp>>(body);
    accepted |= round_trip::<SaverReq>(body);
    accepted |= round_trip::<Reply<SaverResp>>(body);
    accepted |= round_trip::<IdgenReq>(body);
    accepted |= round_trip::<Reply<IdgenResp>>(body);
    accepted |= round_trip::<RoomReq>(body);
    accepted |= round_trip::<Reply<RoomResp>>(body);
    accepted
}
