//! Host tests of the maple tree: address-space pictures, a model-based property test, and
//! concurrent readers against a churning writer.

extern crate std;

mod concurrent;
mod picture;
#[allow(unsafe_code)] // a counting `MapleValue`
mod prop;

use alloc::sync::Arc;

use super::MapleTree;
use crate::platform::emulated::Emulated;
use crate::rcu::Rcu;

/// A tree over a one-CPU emulated platform, the test thread being CPU 0.
fn tree<V: super::MapleValue>() -> MapleTree<V, Emulated> {
    let p = Arc::new(Emulated::new(1, 1));
    p.bind_cpu(0);
    MapleTree::new(Arc::new(Rcu::new(p)))
}
