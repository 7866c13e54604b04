//! Fuzzes the PVC protocol's frame decoder, which parses bytes from the other side of the
//! connection: it must never panic, and whatever it accepts must re-encode to the same
//! message and name only paths beneath the volume root.
#![no_main]

use dr_syncer::pvc::wire::{self, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = wire::decode(data) else {
        return;
    };
    if let Message::Entry(e) = &msg {
        assert!(wire::check_path(&e.path).is_ok(), "accepted a path outside the root");
    }
    if let Ok(frame) = wire::encode(&msg) {
        assert_eq!(wire::decode(&frame[4..]).expect("re-decodes"), msg);
    }
});
