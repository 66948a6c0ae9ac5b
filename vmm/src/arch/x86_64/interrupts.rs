// SPDX-License-Identifier: Apache-2.0
//! Local APIC wiring at boot: LINT0 takes the PIC's ExtINT, LINT1 takes NMI,
//! as on a PC (what the MP table's local interrupt entries promise).

use kvm_bindings::kvm_lapic_state;

/// LVT LINT0 register offset in the APIC page.
const APIC_LVT0: usize = 0x350;
/// LVT LINT1 register offset in the APIC page.
const APIC_LVT1: usize = 0x360;
/// Delivery mode: external interrupt (8259A).
const APIC_MODE_EXTINT: u32 = 0x7;
/// Delivery mode: non-maskable interrupt.
const APIC_MODE_NMI: u32 = 0x4;

fn get_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[offset + i] as u8);
    u32::from_le_bytes(bytes)
}

fn set_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().into_iter().enumerate() {
        lapic.regs[offset + i] = byte as libc::c_char;
    }
}

fn with_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// Sets LINT0 to ExtINT and LINT1 to NMI in `lapic`, keeping other bits.
pub fn wire_local_interrupts(lapic: &mut kvm_lapic_state) {
    let lvt0 = get_reg(lapic, APIC_LVT0);
    set_reg(lapic, APIC_LVT0, with_delivery_mode(lvt0, APIC_MODE_EXTINT));
    let lvt1 = get_reg(lapic, APIC_LVT1);
    set_reg(lapic, APIC_LVT1, with_delivery_mode(lvt1, APIC_MODE_NMI));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_lint_delivery_modes() {
        let mut lapic = kvm_lapic_state::default();
        set_reg(&mut lapic, APIC_LVT0, 0x0001_0000);
        set_reg(&mut lapic, APIC_LVT1, 0x0001_0700);
        wire_local_interrupts(&mut lapic);
        assert_eq!(get_reg(&lapic, APIC_LVT0), 0x0001_0700);
        assert_eq!(get_reg(&lapic, APIC_LVT1), 0x0001_0400);
    }
}
