//! The receiver's state machine fed arbitrary datagram sequences (see the
//! script format in `src/lib.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    xdpblast_fuzz::run_receiver(data);
});
