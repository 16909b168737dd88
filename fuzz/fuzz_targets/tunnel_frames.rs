//! Frames on the agent link, as a compromised agent or gateway could send them: reading any of
//! the link's frame types must never panic.
#![no_main]

use gatehouse_agent::tunnel::{read_frame, OpenSession, Opened, SpooledEvent};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut r = data;
        while let Ok(Some(_)) = read_frame::<_, SpooledEvent>(&mut r).await {}
        let mut r = data;
        let _ = read_frame::<_, OpenSession>(&mut r).await;
        let mut r = data;
        let _ = read_frame::<_, Opened>(&mut r).await;
    });
});
