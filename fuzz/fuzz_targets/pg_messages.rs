//! A stream of tagged PostgreSQL messages from a client or a server: reading must never panic,
//! never return a body larger than the bound, and error-field parsing of any body must not
//! panic either.
#![no_main]

use gatehouse_core::pgwire::{read_message, ErrorFields};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut r = data;
        while let Ok((tag, body)) = read_message(&mut r, MAX).await {
            assert!(body.len() + 4 <= MAX);
            if tag == b'E' || tag == b'N' {
                let _ = ErrorFields::parse(&body);
            }
        }
    });
});
