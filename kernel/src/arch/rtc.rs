//! The CMOS real-time clock, read once for the wall-clock time at boot.

use x86_64::instructions::port::Port;

fn read_reg(reg: u8) -> u8 {
    let mut index = Port::<u8>::new(0x70);
    let mut data = Port::<u8>::new(0x71);
    // SAFETY: 0x70/0x71 are the CMOS index and data ports; selecting a clock register and reading
    // it has no other effect (bit 7 of the index, NMI masking, stays clear).
    unsafe {
        index.write(reg & 0x7f);
        data.read()
    }
}

/// The clock's registers, once no update is in progress.
fn snapshot() -> [u8; 7] {
    let read = || {
        while read_reg(0x0a) & 0x80 != 0 {
            core::hint::spin_loop();
        }
        [
            read_reg(0x00),
            read_reg(0x02),
            read_reg(0x04),
            read_reg(0x07),
            read_reg(0x08),
            read_reg(0x09),
            read_reg(0x32),
        ]
    };
    // Read until two reads agree: an update may land between the registers.
    let mut last = read();
    loop {
        let now = read();
        if now == last {
            return now;
        }
        last = now;
    }
}

/// Seconds since 1970-01-01 00:00 UTC, as the RTC says (QEMU keeps it in UTC). `None` when the
/// registers make no date.
pub fn read_epoch_seconds() -> Option<u64> {
    let [sec, min, hour, day, month, year, century] = snapshot();
    let status_b = read_reg(0x0b);
    let bcd = status_b & 0x04 == 0;
    let conv = |v: u8| if bcd { (v & 0x0f) + (v >> 4) * 10 } else { v };
    let pm = hour & 0x80 != 0;
    let mut hour = conv(hour & 0x7f);
    if status_b & 0x02 == 0 && pm {
        // 12-hour mode.
        hour = (hour % 12) + 12;
    }
    let century = match conv(century) {
        c @ 19..=21 => u64::from(c),
        _ => 20,
    };
    let (sec, min, day, month) = (conv(sec), conv(min), conv(day), conv(month));
    let year = century * 100 + u64::from(conv(year));
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let days = days_from_civil(year as i64, u64::from(month), u64::from(day));
    Some((days as u64) * 86_400 + u64::from(hour) * 3600 + u64::from(min) * 60 + u64::from(sec))
}

/// Days from 1970-01-01 to the given date (proleptic Gregorian; Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u64, d: u64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}
