#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod atomic;
pub mod classes;
pub mod error;
pub mod image;
pub mod labels;
pub mod metrics;
pub mod normalization;
pub mod palette;
pub mod testing;

pub use atomic::{check_output_dir, check_output_file, write_atomic, AtomicFile};
pub use classes::{
    class_index, is_mask_value, BACKGROUND, CLASS_NAMES, MASK_CLASS_NAMES, NUM_CLASSES,
    NUM_MASK_CLASSES, VOID,
};
pub use error::{CoreError, Result};
pub use image::{Mask, RgbImage};
pub use labels::LabelSet;
pub use normalization::Normalization;
pub use palette::{palette_color, PALETTE};

/// Implements `NAMES`, `name()`, `Display` and `FromStr` for an enum of command-line choices; an
/// unknown name is `$err::BadArgument` listing the known ones (`$what` names the choice in it).
///
/// ```
/// #[derive(Debug, Clone, Copy, PartialEq)]
/// enum Monitor { Loss, Miou }
/// #[derive(Debug)]
/// enum MyError { BadArgument(String) }
/// voc_core::cli_enum!(Monitor, "monitor", MyError, [Loss = "val_loss", Miou = "val_miou"]);
/// assert_eq!("VAL_MIOU".parse::<Monitor>().unwrap(), Monitor::Miou);
/// assert_eq!(Monitor::Loss.to_string(), "val_loss");
/// let MyError::BadArgument(err) = "x".parse::<Monitor>().unwrap_err();
/// assert_eq!(err, "unknown monitor 'x': expected one of val_loss, val_miou");
/// ```
#[macro_export]
macro_rules! cli_enum {
    ($ty:ident, $what:literal, $err:ident, [$($variant:ident = $name:literal),+ $(,)?]) => {
        impl $ty {
            /// The names accepted on the command line.
            pub const NAMES: &'static [&'static str] = &[$($name),+];

            /// The command-line name.
            pub fn name(self) -> &'static str {
                match self { $(Self::$variant => $name),+ }
            }
        }

        impl ::std::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl ::std::str::FromStr for $ty {
            type Err = $err;

            fn from_str(s: &str) -> ::std::result::Result<Self, $err> {
                match s.to_ascii_lowercase().as_str() {
                    $($name => Ok(Self::$variant),)+
                    _ => Err($err::BadArgument(format!(
                        concat!("unknown ", $what, " '{}': expected one of {}"),
                        s,
                        Self::NAMES.join(", ")
                    ))),
                }
            }
        }
    };
}
