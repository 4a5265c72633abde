//! Proof that interrupts are off on this CPU (Asterinas's `DisabledLocalIrqGuard` idea): the
//! scheduler's per-CPU state may be touched only with one in hand, so the type system carries
//! the rule instead of `unsafe` at every use.

use core::marker::PhantomData;
use core::ops::Deref;

use crate::Machine;

/// Interrupts are off on the CPU running the holder for as long as it lives.
///
/// Not `Send`: the proof is about this CPU. A thread that holds one across
/// [`schedule`](crate::schedule) may resume on another CPU, where interrupts are off as well
/// (every switch happens with them off), but which CPU it is must be asked again.
#[derive(Debug)]
pub struct IrqsOff {
    _not_send: PhantomData<*mut ()>,
}

impl IrqsOff {
    /// A token for code known to run with interrupts off (an interrupt handler, a thread's
    /// first instructions after a switch).
    ///
    /// # Safety
    /// Interrupts are off on this CPU now and stay off while the token lives.
    pub unsafe fn assume() -> Self {
        IrqsOff {
            _not_send: PhantomData,
        }
    }
}

/// Disables interrupts on this CPU, restores them on drop (if they were on); derefs to the
/// proof.
#[must_use = "dropping the guard turns interrupts back on at once"]
pub struct IrqGuard<'m, M: Machine + ?Sized> {
    machine: &'m M,
    were_enabled: bool,
    off: IrqsOff,
}

impl<'m, M: Machine + ?Sized> IrqGuard<'m, M> {
    /// Turns interrupts off on this CPU.
    pub fn new(machine: &'m M) -> Self {
        let were_enabled = machine.irqs_disable();
        IrqGuard {
            machine,
            were_enabled,
            // SAFETY: `irqs_disable` turned them off; they come back on only in our `drop`,
            // which the token (a field) does not outlive.
            off: unsafe { IrqsOff::assume() },
        }
    }
}

impl<M: Machine + ?Sized> Deref for IrqGuard<'_, M> {
    type Target = IrqsOff;

    fn deref(&self) -> &IrqsOff {
        &self.off
    }
}

impl<M: Machine + ?Sized> Drop for IrqGuard<'_, M> {
    fn drop(&mut self) {
        if self.were_enabled {
            // SAFETY: they were on when the guard was made, and the guard's token dies with it.
            unsafe { self.machine.irqs_enable() };
        }
    }
}
