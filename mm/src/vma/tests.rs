use super::*;
use crate::platform::emulated::Emulated;
use crate::testutil::SetOnDrop;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const MM: u64 = 7;

fn setup() -> MmapLock<Emulated> {
    MmapLock::new(Arc::new(Emulated::new(1, 2)))
}

fn attached_vma(lock: &MmapLock<Emulated>) -> Arc<Vma> {
    let g = lock.write();
    let vma = Vma::new_locked(&g, MM, 0x1000..0x3000, Prot::READ | Prot::WRITE);
    vma.lock().mark_attached(&g);
    assert!(vma.lock().is_write_locked_by(&g));
    vma
}

#[test]
fn new_vma_is_locked_until_mmap_write_unlock() {
    let lock = setup();
    let g = lock.write();
    let vma = Vma::new_locked(&g, MM, 0x1000..0x2000, Prot::READ);
    vma.lock().mark_attached(&g);
    assert_eq!(
        vma.start_read(&lock, MM).err(),
        Some(StartReadError::Locked)
    );
    drop(g);
    let r = vma
        .start_read(&lock, MM)
        .expect("unlocked by vma_end_write_all");
    assert_eq!(vma.lock().readers(), 1);
    drop(r);
    assert_eq!(vma.lock().readers(), 0);
}

#[test]
fn start_read_rejects_other_mm_and_detached() {
    let lock = setup();
    let vma = attached_vma(&lock);
    assert_eq!(
        vma.start_read(&lock, MM + 1).err(),
        Some(StartReadError::NotOurs)
    );
    assert_eq!(
        vma.lock().readers(),
        0,
        "failed start_read leaked a reference"
    );
    let g = lock.write();
    vma.start_write(&g);
    vma.lock().mark_detached(&g);
    drop(g);
    assert!(!vma.lock().is_attached());
    assert_eq!(
        vma.start_read(&lock, MM).err(),
        Some(StartReadError::Detached)
    );
}

#[test]
fn start_write_waits_for_readers_and_then_excludes_them() {
    let lock = setup();
    let vma = attached_vma(&lock);
    let reader = vma.start_read(&lock, MM).unwrap();
    let written = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let g = lock.write();
            vma.start_write(&g);
            written.store(true, Ordering::SeqCst);
            assert_eq!(vma.lock().readers(), 0);
            drop(g);
        });
        std::thread::sleep(Duration::from_millis(30));
        assert!(
            !written.load(Ordering::SeqCst),
            "writer did not wait for the reader"
        );
        drop(reader);
    });
    assert!(written.load(Ordering::SeqCst));
    assert!(vma.start_read(&lock, MM).is_ok());
}

#[test]
fn detach_waits_for_transient_readers() {
    let lock = setup();
    let vma = attached_vma(&lock);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                // Each success must be on an attached VMA that is not write-locked.
                if let Ok(r) = vma.start_read(&lock, MM) {
                    assert!(r.vma().lock().is_attached());
                }
            }
        });
        // Stops the reader however this thread leaves the scope: a failed assertion below
        // must fail the test, not leave the reader spinning.
        let stop_reader = SetOnDrop(&stop);
        for _ in 0..200 {
            let g = lock.write();
            vma.start_write(&g);
            assert_eq!(vma.lock().readers(), 0);
            drop(g);
        }
        let g = lock.write();
        vma.start_write(&g);
        vma.lock().mark_detached(&g);
        assert!(!vma.lock().is_attached());
        drop(g);
        drop(stop_reader);
    });
    assert_eq!(
        vma.start_read(&lock, MM).err(),
        Some(StartReadError::Detached)
    );
}

/// `mm_lock_seq` wraps after 2^31 write holds: a VMA stamped in the write period that the counter
/// comes back to must still have its readers drained by `vma_start_write`, not be taken as
/// already locked (that would let a fault run inside a munmap of its range).
#[test]
fn start_write_after_the_sequence_wraps_still_waits_for_readers() {
    let lock = setup();
    let vma = attached_vma(&lock); // stamped with period 1; the lock is now at 2
    let reader = vma.start_read(&lock, MM).unwrap();
    // 2^31 write holds later the next write period is 1 again.
    lock.skip_write_periods_to(0);
    let written = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let g = lock.write();
            assert_eq!(g.mm_lock_seq(), 1);
            vma.start_write(&g);
            written.store(true, Ordering::SeqCst);
            assert_eq!(vma.lock().readers(), 0, "write-locked with a reader inside");
            drop(g);
        });
        std::thread::sleep(Duration::from_millis(30));
        assert!(
            !written.load(Ordering::SeqCst),
            "the wrapped stamp let the writer skip the reader"
        );
        drop(reader);
    });
    assert!(written.load(Ordering::SeqCst));
}
