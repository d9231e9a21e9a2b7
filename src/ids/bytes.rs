//! Reading fixed little-endian fields off the front of untrusted bytes: the one reader that
//! the id-set codec, the state file and its journal share. Every read checks what is left
//! before it takes anything, so a length from the bytes never reads or allocates past them.

/// A read wanted more bytes than were left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("truncated: {wanted} bytes wanted, {left} left")]
pub struct Truncated {
    pub wanted: usize,
    pub left: usize,
}

/// Reads fixed fields off the front of a byte slice.
#[derive(Debug, Clone, Copy)]
pub struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader(bytes)
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], Truncated> {
        if n > self.0.len() {
            return Err(Truncated {
                wanted: n,
                left: self.0.len(),
            });
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    pub fn u8(&mut self) -> Result<u8, Truncated> {
        Ok(self.take(1)?[0])
    }

    pub fn u32(&mut self) -> Result<u32, Truncated> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    pub fn u64(&mut self) -> Result<u64, Truncated> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    /// The bytes not read yet.
    pub fn rest(&self) -> &'a [u8] {
        self.0
    }

    /// How many bytes are left.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_in_order_and_a_short_read_takes_nothing() {
        let bytes = [1u8, 2, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 9];
        let mut r = Reader::new(&bytes);
        assert_eq!(r.u8(), Ok(1));
        assert_eq!(r.u32(), Ok(2));
        assert_eq!(r.u64(), Ok(3));
        assert_eq!(r.len(), 1);
        assert_eq!(r.u32(), Err(Truncated { wanted: 4, left: 1 }));
        assert_eq!(r.rest(), [9]);
        assert_eq!(r.take(1), Ok(&[9u8][..]));
        assert!(r.is_empty());
        assert_eq!(
            Truncated { wanted: 8, left: 0 }.to_string(),
            "truncated: 8 bytes wanted, 0 left"
        );
    }
}
