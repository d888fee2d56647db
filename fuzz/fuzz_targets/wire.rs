//! Frame and datagram parsing on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| xdpblast_fuzz::run_wire(data));
