//! PASCAL VOC's colour map, the colours of its mask PNGs.

/// VOC's colour of mask value `v`: the VOCdevkit's bit-interleaving colour map (bit `k` of red, green,
/// blue comes from bits `3j`, `3j+1`, `3j+2` of `v`, highest bits first), so 255, void, is cream
/// (224, 224, 192).
///
/// ```
/// assert_eq!(voc_core::palette_color(1), [128, 0, 0]); // aeroplane
/// assert_eq!(voc_core::palette_color(voc_core::VOID), [224, 224, 192]);
/// ```
pub const fn palette_color(v: u8) -> [u8; 3] {
    let mut rgb = [0u8; 3];
    let mut label = v;
    let mut shift = 8;
    while shift > 0 {
        shift -= 1;
        let mut channel = 0;
        while channel < 3 {
            rgb[channel] |= ((label >> channel) & 1) << shift;
            channel += 1;
        }
        label >>= 3;
    }
    rgb
}

/// The whole colour map: entry `v` is [`palette_color`]`(v)`.
pub const PALETTE: [[u8; 3]; 256] = {
    let mut table = [[0u8; 3]; 256];
    let mut v = 0;
    while v < 256 {
        table[v] = palette_color(v as u8);
        v += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn palette_matches_vocdevkit() {
        assert_eq!(PALETTE[0], [0, 0, 0]);
        assert_eq!(PALETTE[1], [128, 0, 0]);
        assert_eq!(PALETTE[3], [128, 128, 0]);
        assert_eq!(PALETTE[15], [192, 128, 128]);
        assert_eq!(PALETTE[20], [0, 64, 128]);
        assert_eq!(PALETTE[255], [224, 224, 192]);
    }
}
