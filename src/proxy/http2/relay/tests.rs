//! The driver's timer: a client that begins a header block and stops is cut off.

use super::*;
use crate::proxy::http2::frame::{write_frame, HEADERS, PROTOCOL_ERROR};
use crate::proxy::http2::test_support::*;

#[tokio::test]
async fn a_client_that_stops_mid_block_is_cut_off() {
    tokio::time::pause();
    let mut raw = Raw::start().await;
    let mut out = Vec::new();
    write_frame(&mut out, HEADERS, 0, 1, &[0x82]);
    raw.send(&out).await;
    // Time stands still until every task waits: the relay has read the frame by then.
    tokio::time::sleep(Duration::from_millis(1)).await;
    tokio::time::advance(HEADER_TIMEOUT + Duration::from_secs(1)).await;
    assert_eq!(raw.goaway_code().await, PROTOCOL_ERROR);
}
