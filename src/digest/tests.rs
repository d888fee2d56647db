use super::*;

/// A small deterministic generator (xorshift), so failures replay.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn stream(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 1021) as u8).collect()
}

fn reference(key: Option<[u8; 32]>, bytes: &[u8]) -> [u8; 32] {
    *key.map_or_else(|| blake3::hash(bytes), |k| blake3::keyed_hash(&k, bytes)).as_bytes()
}

/// Cuts `data` into payloads of `payload` bytes, delivers them in a
/// shuffled order in batches of up to `batch` (sorted within a batch, as
/// the receiver's writes are), and checks the digest and every prefix.
fn deliver(data: &[u8], payload: usize, batch: usize, key: Option<[u8; 32]>, scratch: &mut Scratch, rng: &mut Rng) {
    let d = Digest::new(Params { key, len: data.len() as u64 });
    let mut order: Vec<usize> = (0..data.len().div_ceil(payload)).collect();
    // Mostly in order, as a network delivers: swap near neighbours.
    for i in 0..order.len() {
        let j = (i + rng.below(40) as usize).min(order.len() - 1);
        order.swap(i, j);
    }
    for part in order.chunks(batch) {
        let mut segs: Vec<(u64, &[u8])> = part
            .iter()
            .map(|&i| ((i * payload) as u64, &data[i * payload..((i + 1) * payload).min(data.len())]))
            .collect();
        segs.sort_by_key(|s| s.0);
        d.absorb(&segs, scratch);
        let (upto, hash) = d.prefix();
        assert!(upto % BLOCK == 0 || upto == data.len() as u64, "a prefix ends at a block: {upto}");
        assert_eq!(hash, reference(key, &data[..upto as usize]), "prefix of {upto}");
    }
    d.release(scratch);
    assert!(!scratch.holds());
    assert_eq!(d.verified(), data.len() as u64);
    assert_eq!(d.finish(), Some(reference(key, data)), "len {} payload {payload}", data.len());
}

#[test]
fn any_order_and_cut_gives_blake3_of_the_stream() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let key = Some([7u8; 32]);
    let lens = [0, 1, 100, 1023, 1024, 1025, 2048, 3000, 4096, 5000, 65_536, 100_000, 1 << 20, (1 << 20) + 1];
    for &len in &lens {
        let data = stream(len);
        for payload in [1, 7, 576, 1024, 1440, 4096, 8940] {
            if len / payload > 20_000 {
                continue;
            }
            for batch in [1, 3, 64] {
                deliver(&data, payload, batch, None, &mut Scratch::new(), &mut rng);
                deliver(&data, payload, batch, key, &mut Scratch::in_place_only(), &mut rng);
                deliver(&data, payload, batch, key, &mut Scratch::holding(), &mut rng);
            }
        }
    }
}

#[test]
fn several_blocks_out_of_order_merge_into_the_root() {
    let mut rng = Rng(42);
    for len in [3 << 20, (5 << 20) + 12_345, 8 << 20] {
        let data = stream(len);
        deliver(&data, 8940, 256, None, &mut Scratch::new(), &mut rng);
        deliver(&data, 1440, 64, Some([1; 32]), &mut Scratch::in_place_only(), &mut rng);
        deliver(&data, 1440, 37, None, &mut Scratch::holding(), &mut rng);
    }
}

#[test]
fn a_held_run_is_hashed_at_each_window_and_when_it_breaks() {
    let data = stream((3 * held::WINDOW + 5000) as usize);
    let len = data.len() as u64;
    let d = Digest::new(Params { key: None, len });
    let mut s = Scratch::holding();
    let piece = |at: u64, n: u64| (at, &data[at as usize..(at + n).min(len) as usize]);
    // In order up to a byte short of the first window: all held.
    let w = held::WINDOW;
    d.absorb(&[piece(0, w - 1)], &mut s);
    assert!(s.holds());
    // The window's last byte completes it: hashed, nothing held.
    d.absorb(&[piece(w - 1, 1)], &mut s);
    assert!(!s.holds());
    // A piece that jumps ahead hashes what was held before it is held.
    d.absorb(&[piece(w, 100)], &mut s);
    d.absorb(&[piece(2 * w, 3000)], &mut s);
    assert!(s.holds());
    d.release(&mut s);
    assert!(!s.holds());
    // The gap, then the rest, in pieces crossing windows and the end.
    for at in (w + 100..2 * w).step_by(1440) {
        d.absorb(&[piece(at, 1440.min(2 * w - at))], &mut s);
    }
    for at in (2 * w + 3000..len).step_by(8940) {
        d.absorb(&[piece(at, 8940)], &mut s);
    }
    assert!(!s.holds(), "the stream's end completes the last window");
    assert_eq!(d.finish(), Some(reference(None, &data)));
    // Past the end: held, and ignored when released.
    d.absorb(&[(len, &[1u8; 10][..])], &mut s);
    d.release(&mut s);
    assert_eq!(d.finish(), Some(reference(None, &data)));
}

#[test]
fn a_resumed_stream_continues_from_its_verified_prefix() {
    let data = stream((3 << 20) + 999);
    let d = Digest::new(Params { key: None, len: data.len() as u64 });
    let mut s = Scratch::new();
    // What a resume reads back: whole blocks, in order.
    d.absorb(&[(0, &data[..2 << 20])], &mut s);
    assert_eq!(d.prefix(), (2 << 20, reference(None, &data[..2 << 20])));
    for (i, c) in data[2 << 20..].chunks(1440).enumerate().rev() {
        d.absorb(&[((2 << 20) + (i * 1440) as u64, c)], &mut s);
    }
    assert_eq!(d.finish(), Some(reference(None, &data)));
    d.reset();
    assert_eq!(d.verified(), 0);
    assert_eq!(d.prefix().1, reference(None, b""));
}

#[test]
fn stale_or_out_of_range_pieces_change_nothing() {
    let data = stream(5000);
    let d = Digest::new(Params { key: None, len: 5000 });
    let mut s = Scratch::new();
    d.absorb(&[(0, &data[..])], &mut s);
    let before = d.finish();
    // Absorbed again, or past the end: ignored.
    d.absorb(&[(0, &data[..100])], &mut s);
    d.absorb(&[(4990, &[0u8; 40][..])], &mut s);
    assert_eq!(d.finish(), before);
    assert_eq!(before, Some(reference(None, &data)));
}
