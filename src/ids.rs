//! The four small indexes that cross module boundaries, each its own type so that
//! one is never passed where another is meant: they are all 16-bit positions, and
//! before they had names a doc comment already described the wrong one.
use std::fmt;

macro_rules! index_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub u16);

        impl $name {
            /// The position as a slice index.
            #[inline(always)]
            pub const fn index(self) -> usize {
                self.0 as usize
            }

            /// The id of position `i`, if it fits in 16 bits.
            pub fn from_index(i: usize) -> Option<Self> {
                u16::try_from(i).ok().map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

index_type!(
    /// A worker, and the queue it serves: its position among the workers.
    WorkerId
);
index_type!(
    /// A daemon's position in the list of every daemon of every service, in config
    /// order ([`Config::daemons`](crate::config::Config::daemons)). It indexes the
    /// next-hop table and is what workers and the loop call a daemon by; a reload
    /// may give a daemon another id (records are re-pointed by address).
    BackendId
);
index_type!(
    /// A service's position in the config's list of services.
    ServiceId
);
index_type!(
    /// A daemon's position in its own service's pool.
    PoolIndex
);
