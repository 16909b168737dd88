//! A startup packet body from an unauthenticated client: parsing must never panic, and a
//! parsed startup's parameters must hold no NUL (they become C strings upstream).
#![no_main]

use gatehouse_core::pgwire::{parse_startup, StartupPacket};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(StartupPacket::Startup { params, .. }) = parse_startup(data) {
        for (k, v) in params {
            assert!(!k.contains('\0') && !v.contains('\0'));
        }
    }
});
