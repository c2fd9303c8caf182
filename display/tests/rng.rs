//! A seeded PRNG (xorshift64*) for reproducible random tests.

pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `lo..=hi`.
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    pub(crate) fn u8(&mut self) -> u8 {
        self.next() as u8
    }

    pub(crate) fn u16(&mut self) -> u16 {
        self.next() as u16
    }

    pub(crate) fn u32(&mut self) -> u32 {
        self.next() as u32
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub(crate) fn bool(&mut self) -> bool {
        self.next() & 1 == 1
    }

    /// Bytes that compress sometimes (runs) and sometimes not (noise).
    pub(crate) fn bytes(&mut self, len: usize) -> Vec<u8> {
        let runs = self.bool();
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let b = self.u8();
            let n = if runs { 1 + self.below(40) } else { 1 };
            out.extend(std::iter::repeat_n(b, n.min(len - out.len())));
        }
        out
    }
}
