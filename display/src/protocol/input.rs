//! Input from the client: KEY, POINTER and WHEEL (PROTOCOL.md §8, types
//! 0x20–0x22).

use super::wire::{
    check_range, check_reserved, check_room, expect_end, get_i16, get_u16, get_u32, get_u8,
    put_i16, put_u16, put_u32, put_u8, Field,
};
use super::{EmitError, Error};

mod field {
    use super::Field;

    pub(super) const KEYSYM: Field = 0..4;
    pub(super) const DOWN: usize = 4;

    pub(super) const X: Field = 0..2;
    pub(super) const Y: Field = 2..4;
    pub(super) const BUTTONS: Field = 4..6;

    pub(super) const DX: Field = 0..2;
    pub(super) const DY: Field = 2..4;
}

/// KEY (PROTOCOL.md §8.1): an X11 keysym pressed or released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyRepr {
    /// X11 keysym.
    pub keysym: u32,
    /// Pressed (true) or released.
    pub down: bool,
}

impl KeyRepr {
    /// Body length.
    pub const LEN: usize = field::DOWN + 1;

    /// Parses a KEY body.
    pub fn parse(body: &[u8]) -> Result<Self, Error> {
        expect_end(body, Self::LEN)?;
        let down = get_u8(body, field::DOWN)?;
        check_range("down", u64::from(down), 0, 1)?;
        Ok(KeyRepr {
            keysym: get_u32(body, field::KEYSYM)?,
            down: down == 1,
        })
    }

    /// Body length.
    pub fn buffer_len(&self) -> usize {
        Self::LEN
    }

    /// Writes the body into `buf[..5]`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), EmitError> {
        check_room(buf, Self::LEN)?;
        put_u32(buf, field::KEYSYM, self.keysym)?;
        put_u8(buf, field::DOWN, u8::from(self.down))
    }
}

/// The buttons of POINTER (PROTOCOL.md §8.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Buttons(pub u16);

impl Buttons {
    /// X button 1.
    pub const LEFT: Buttons = Buttons(1 << 0);
    /// X button 2.
    pub const MIDDLE: Buttons = Buttons(1 << 1);
    /// X button 3.
    pub const RIGHT: Buttons = Buttons(1 << 2);
    /// X button 8.
    pub const BACK: Buttons = Buttons(1 << 3);
    /// X button 9.
    pub const FORWARD: Buttons = Buttons(1 << 4);
    /// Every button version 1 defines.
    pub const ALL: Buttons = Buttons(0b1_1111);

    /// Whether every button of `other` is held.
    pub fn contains(self, other: Buttons) -> bool {
        self.0 & other.0 == other.0
    }
}

/// POINTER (PROTOCOL.md §8.2): position and the buttons held now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PointerRepr {
    /// Framebuffer x.
    pub x: u16,
    /// Framebuffer y.
    pub y: u16,
    /// Buttons held.
    pub buttons: Buttons,
}

impl PointerRepr {
    /// Body length.
    pub const LEN: usize = field::BUTTONS.end;

    /// Parses a POINTER body.
    pub fn parse(body: &[u8]) -> Result<Self, Error> {
        expect_end(body, Self::LEN)?;
        let repr = PointerRepr {
            x: get_u16(body, field::X)?,
            y: get_u16(body, field::Y)?,
            buttons: Buttons(get_u16(body, field::BUTTONS)?),
        };
        repr.validate()?;
        Ok(repr)
    }

    /// Checks the limits of PROTOCOL.md §8.2 (no reserved buttons).
    pub fn validate(&self) -> Result<(), Error> {
        check_reserved(
            "buttons",
            u32::from(self.buttons.0),
            u32::from(Buttons::ALL.0),
        )
    }

    /// Body length.
    pub fn buffer_len(&self) -> usize {
        Self::LEN
    }

    /// Writes the body into `buf[..6]`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), EmitError> {
        self.validate()?;
        check_room(buf, Self::LEN)?;
        put_u16(buf, field::X, self.x)?;
        put_u16(buf, field::Y, self.y)?;
        put_u16(buf, field::BUTTONS, self.buttons.0)
    }
}

/// WHEEL (PROTOCOL.md §8.3): scroll deltas in 1/120 of a notch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WheelRepr {
    /// Horizontal, positive = right.
    pub dx: i16,
    /// Vertical, positive = down.
    pub dy: i16,
}

impl WheelRepr {
    /// Body length.
    pub const LEN: usize = field::DY.end;
    /// One notch of a classic wheel.
    pub const NOTCH: i16 = 120;

    /// Parses a WHEEL body.
    pub fn parse(body: &[u8]) -> Result<Self, Error> {
        expect_end(body, Self::LEN)?;
        Ok(WheelRepr {
            dx: get_i16(body, field::DX)?,
            dy: get_i16(body, field::DY)?,
        })
    }

    /// Body length.
    pub fn buffer_len(&self) -> usize {
        Self::LEN
    }

    /// Writes the body into `buf[..4]`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), EmitError> {
        check_room(buf, Self::LEN)?;
        put_i16(buf, field::DX, self.dx)?;
        put_i16(buf, field::DY, self.dy)
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn key_bytes() {
        let key = KeyRepr {
            keysym: 0xff0d,
            down: true,
        };
        let mut buf = [0; 5];
        key.emit(&mut buf).unwrap();
        assert_eq!(buf, [0x0d, 0xff, 0, 0, 1]);
        assert_eq!(KeyRepr::parse(&buf), Ok(key));
        buf[4] = 2;
        assert!(KeyRepr::parse(&buf).is_err());
    }

    #[test]
    fn pointer_bytes() {
        let pointer = PointerRepr {
            x: 10,
            y: 20,
            buttons: Buttons(Buttons::LEFT.0 | Buttons::FORWARD.0),
        };
        let mut buf = [0; 6];
        pointer.emit(&mut buf).unwrap();
        assert_eq!(buf, [10, 0, 20, 0, 0x11, 0]);
        assert_eq!(PointerRepr::parse(&buf), Ok(pointer));
        buf[4] = 0x20;
        assert!(matches!(
            PointerRepr::parse(&buf),
            Err(Error::ReservedBits { .. })
        ));
    }

    #[test]
    fn wheel_bytes() {
        let wheel = WheelRepr { dx: -1, dy: 120 };
        let mut buf = [0; 4];
        wheel.emit(&mut buf).unwrap();
        assert_eq!(buf, [0xff, 0xff, 120, 0]);
        assert_eq!(WheelRepr::parse(&buf), Ok(wheel));
    }
}
