// SPDX-License-Identifier: Apache-2.0
//! Builds a bootable microVM from a [`VmConfig`]: guest memory, kernel,
//! initrd, command line, boot tables, legacy devices and vCPUs.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{load_cmdline, BzImage, Elf, KernelLoader};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::boot_params::{write_boot_params, BootParamsError, InitrdRegion};
use crate::arch::cpuid::{build_vcpu_cpuid, CpuTemplate, CpuidError};
use crate::arch::layout::{
    BOOT_TIMER_START, CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START, I8042_DATA_PORT,
    I8042_PORT_LEN, MMIO_GAP_START, MMIO_WINDOW_SIZE, SERIAL_GSI, SERIAL_PORT_BASE,
    SERIAL_PORT_LEN,
};
use crate::arch::mptable::{setup_mptable, MptableError};
use crate::arch::regs::{write_boot_tables, BootProtocol, EntryPoint, RegsError};
use crate::config::VmConfig;
use crate::device_manager::mmio::{allocate_slots, attach_virtio_device, MmioDeviceError};
use crate::devices::boot_timer::BootTimer;
use crate::devices::bus::{Bus, BusError};
use crate::devices::legacy::console_file::ConsoleFile;
use crate::devices::legacy::i8042::{I8042State, I8042};
use crate::devices::legacy::serial::{
    EventFdTrigger, SerialDevice, SerialDeviceState, SerialOutput, SerialStateError,
};
use crate::devices::virtio::block::{Block, BlockError};
use crate::devices::virtio::fs::{Fs, FsError};
use crate::devices::virtio::net::{Net, NetError};
use crate::devices::virtio::rng::{Entropy, EntropyError};
use crate::devices::virtio::vsock::{Vsock, VsockError};
use crate::devices::virtio::VirtioDevice;
use crate::event_loop::Subscriber;
use crate::exit::ExitNotifier;
use crate::microvm::{Microvm, MicrovmParts};
use crate::snapshot::SnapshotError;
use crate::vstate::kvm::{KvmContext, KvmError};
use crate::vstate::memory::{
    create_guest_memory, Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, MemoryError,
};
use crate::vstate::probe::{probe_supervisor_mode, ProbeError};
use crate::vstate::vcpu::{Vcpu, VcpuError};
use crate::vstate::vm::{Vm, VmError};

mod restore;

pub use restore::restore_microvm;

/// Offset of the 64-bit entry point in a bzImage's protected-mode code.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// ELF magic, to tell a vmlinux from a bzImage.
const ELF_MAGIC: [u8; 4] = *b"\x7fELF";
/// Guest page size, the initrd's alignment.
const PAGE_SIZE: u64 = 4096;

/// Errors building a microVM.
#[derive(Debug, thiserror::Error)]
pub enum BuildMicrovmError {
    /// The kernel image cannot be opened or read.
    #[error("Cannot read the kernel {path}")]
    KernelRead {
        /// The image.
        path: PathBuf,
        /// The open or read error (missing file, no permission, I/O).
        #[source]
        source: std::io::Error,
    },
    /// The kernel image is neither an ELF vmlinux nor a bzImage.
    #[error("Unrecognised kernel image {path}: expected an ELF vmlinux or a bzImage ({reason})")]
    KernelFormat {
        /// The image.
        path: PathBuf,
        /// linux-loader's reason.
        reason: String,
    },
    /// The kernel does not fit in guest memory.
    #[error("The kernel {path} does not fit in {memory_mib} MiB of guest memory")]
    KernelTooLarge {
        /// The image.
        path: PathBuf,
        /// Guest memory.
        memory_mib: u64,
    },
    /// The initrd cannot be opened or read.
    #[error("Cannot read the initrd {path}")]
    InitrdRead {
        /// The file.
        path: PathBuf,
        /// The open or read error (missing file, no permission, I/O).
        #[source]
        source: std::io::Error,
    },
    /// The initrd does not fit between the kernel and the end of low memory.
    #[error(
        "The initrd {path} ({size} bytes) does not fit in guest memory above the kernel; \
         give the VM more memory"
    )]
    InitrdTooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The command line exceeds the kernel's limit.
    #[error("The kernel command line is too long: {len} bytes, the most is {max}")]
    CmdlineTooLong {
        /// Its length with vmpod's additions.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The command line has characters the kernel cannot take, or cannot
    /// be written to guest memory.
    #[error("Invalid kernel command line")]
    CmdlineInvalid(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// More vCPUs than KVM allows on this host.
    #[error("{asked} vCPUs are more than KVM allows on this host ({max})")]
    TooManyVcpus {
        /// What was asked for.
        asked: u8,
        /// KVM's limit.
        max: usize,
    },
    /// The serial output file cannot be created.
    #[error("Cannot create the serial output file {path}")]
    SerialFile {
        /// The file.
        path: PathBuf,
        /// The create error (missing directory, no permission).
        #[source]
        source: std::io::Error,
    },
    /// `/dev/kvm` is missing or unusable.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// The CPU probe failed.
    #[error(transparent)]
    Probe(#[from] ProbeError),
    /// Guest memory cannot be mapped.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The VM cannot be set up.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// A vCPU cannot be set up.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// The CPUID table cannot be built.
    #[error(transparent)]
    Cpuid(#[from] CpuidError),
    /// The MP table cannot be written.
    #[error(transparent)]
    Mptable(#[from] MptableError),
    /// The boot parameters cannot be written.
    #[error(transparent)]
    BootParams(#[from] BootParamsError),
    /// The boot GDT or page tables cannot be written.
    #[error(transparent)]
    BootTables(#[from] RegsError),
    /// A device cannot be placed on its bus.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// An event fd for an interrupt cannot be created.
    #[error("Cannot create an interrupt event")]
    EventFd(#[source] std::io::Error),
    /// A virtio device cannot be placed.
    #[error(transparent)]
    MmioDevice(#[from] MmioDeviceError),
    /// A disk cannot be set up.
    #[error(transparent)]
    Block(#[from] BlockError),
    /// A network interface cannot be set up.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The vsock device cannot be set up.
    #[error(transparent)]
    Vsock(#[from] VsockError),
    /// A shared directory cannot be set up.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// The entropy device cannot be created.
    #[error(transparent)]
    Entropy(#[from] EntropyError),
    /// The snapshot cannot be read, or belongs to another VM.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The serial port's saved state cannot be applied.
    #[error("Cannot restore the serial port's state")]
    SerialState(#[source] SerialStateError),
}

impl BuildMicrovmError {
    /// Whether the user's input (files, sizes, command line) is at fault,
    /// rather than the host or KVM.
    pub fn is_input_error(&self) -> bool {
        matches!(
            self,
            Self::KernelRead { .. }
                | Self::KernelFormat { .. }
                | Self::KernelTooLarge { .. }
                | Self::InitrdRead { .. }
                | Self::InitrdTooLarge { .. }
                | Self::CmdlineTooLong { .. }
                | Self::CmdlineInvalid(_)
                | Self::TooManyVcpus { .. }
                | Self::SerialFile { .. }
                | Self::Vsock(_)
                | Self::Block(_)
                | Self::Net(_)
                | Self::Fs(_)
                | Self::Snapshot(_)
        )
    }
}

/// A kernel in guest memory and how to enter it.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// Entry point and protocol.
    pub entry: EntryPoint,
    /// First byte after the kernel image.
    pub end: GuestAddress,
    /// The bzImage's setup header, if the image was a bzImage.
    pub setup_header: Option<setup_header>,
}

/// Loads an ELF vmlinux (PVH if it has the PVH note, else the 64-bit entry)
/// or a bzImage (64-bit entry).
///
/// # Errors
/// [`BuildMicrovmError::KernelRead`], `KernelFormat` or `KernelTooLarge`.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, BuildMicrovmError> {
    let read_error = |source| BuildMicrovmError::KernelRead {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(read_error)?;
    let mut magic = [0u8; 4];
    let is_elf = match std::io::Read::read_exact(&mut file, &mut magic) {
        Ok(()) => magic == ELF_MAGIC,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => false,
        Err(e) => return Err(read_error(e)),
    };
    file.seek(SeekFrom::Start(0)).map_err(read_error)?;
    let result = if is_elf {
        Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
    } else {
        BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
    };
    let loaded = result.map_err(|e| kernel_load_error(path, mem, e))?;
    let entry = match (is_elf, loaded.pvh_boot_cap) {
        (true, PvhBootCapability::PvhEntryPresent(addr)) => EntryPoint {
            addr,
            protocol: BootProtocol::Pvh,
        },
        (true, _) => EntryPoint {
            addr: loaded.kernel_load,
            protocol: BootProtocol::Linux64,
        },
        (false, _) => EntryPoint {
            addr: loaded
                .kernel_load
                .checked_add(BZIMAGE_64BIT_ENTRY_OFFSET)
                .ok_or_else(|| BuildMicrovmError::KernelFormat {
                    path: path.to_path_buf(),
                    reason: "load address overflows".into(),
                })?,
            protocol: BootProtocol::Linux64,
        },
    };
    Ok(LoadedKernel {
        entry,
        end: GuestAddress(loaded.kernel_end),
        setup_header: loaded.setup_header,
    })
}

fn kernel_load_error(
    path: &Path,
    mem: &GuestMemoryMmap,
    e: linux_loader::loader::Error,
) -> BuildMicrovmError {
    use linux_loader::loader::{bzimage, elf, Error as LoaderError};
    let too_large = matches!(
        e,
        LoaderError::Elf(elf::Error::ReadKernelImage)
            | LoaderError::Bzimage(bzimage::Error::ReadBzImageCompressedKernel)
            | LoaderError::MemoryOverflow
    );
    if too_large {
        BuildMicrovmError::KernelTooLarge {
            path: path.to_path_buf(),
            memory_mib: (mem.last_addr().raw_value() + 1) >> 20,
        }
    } else {
        BuildMicrovmError::KernelFormat {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }
    }
}

/// Loads the initrd at the top of low memory (below the MMIO gap), page
/// aligned, above the kernel.
///
/// # Errors
/// [`BuildMicrovmError::InitrdRead`] or `InitrdTooLarge`.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: GuestAddress,
) -> Result<InitrdRegion, BuildMicrovmError> {
    let read_error = |source| BuildMicrovmError::InitrdRead {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(read_error)?;
    let size = file.metadata().map_err(read_error)?.len();
    let too_large = || BuildMicrovmError::InitrdTooLarge {
        path: path.to_path_buf(),
        size,
    };
    let low_end = (mem.last_addr().raw_value() + 1).min(MMIO_GAP_START);
    let addr = low_end.checked_sub(size).ok_or_else(too_large)? & !(PAGE_SIZE - 1);
    if addr < kernel_end.raw_value() {
        return Err(too_large());
    }
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|e| read_error(std::io::Error::other(e.to_string())))?;
    Ok(InitrdRegion {
        addr: GuestAddress(addr),
        size,
    })
}

/// The final command line: the configured one plus the switches the CPU
/// template needs, unless already present.
///
/// # Errors
/// [`BuildMicrovmError::CmdlineTooLong`] or `CmdlineInvalid`.
pub fn build_cmdline(
    base: &str,
    template: CpuTemplate,
    device_switches: &[String],
) -> Result<Cmdline, BuildMicrovmError> {
    let mut words: Vec<&str> = base.split_ascii_whitespace().collect();
    for switch in template.kernel_cmdline_switches() {
        if !words.contains(switch) {
            words.push(switch);
        }
    }
    words.extend(device_switches.iter().map(String::as_str));
    let text = words.join(" ");
    // The kernel's buffer holds the terminating NUL too.
    if text.len() >= CMDLINE_MAX_SIZE {
        return Err(BuildMicrovmError::CmdlineTooLong {
            len: text.len(),
            max: CMDLINE_MAX_SIZE - 1,
        });
    }
    let mut cmdline =
        Cmdline::new(CMDLINE_MAX_SIZE).map_err(|e| BuildMicrovmError::CmdlineInvalid(e.into()))?;
    if !text.is_empty() {
        cmdline
            .insert_str(&text)
            .map_err(|e| BuildMicrovmError::CmdlineInvalid(e.into()))?;
    }
    Ok(cmdline)
}

/// Decides the CPU template: `auto` becomes `emulated-supervisor` when the
/// probe finds guest CPL0 emulated, `host` otherwise.
///
/// # Errors
/// [`BuildMicrovmError::Probe`] if the probe cannot run.
pub fn resolve_cpu_template(
    kvm: &KvmContext,
    template: CpuTemplate,
) -> Result<CpuTemplate, BuildMicrovmError> {
    if template != CpuTemplate::Auto {
        return Ok(template);
    }
    let probe = probe_supervisor_mode(kvm)?;
    let resolved = template.resolve(probe.supervisor_emulated);
    tracing::info!(
        "CPU probe: {} ns per CPL0 loop iteration; using CPU template {resolved}",
        probe.per_iteration.as_nanos()
    );
    Ok(resolved)
}

fn serial_output(config: &VmConfig) -> Result<SerialOutput, BuildMicrovmError> {
    use crate::config::SerialTarget;
    Ok(match &config.serial {
        SerialTarget::Stdout => Box::new(std::io::stdout()),
        SerialTarget::None => Box::new(std::io::sink()),
        SerialTarget::File(path) => {
            let file = File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(path)
                .map_err(|source| BuildMicrovmError::SerialFile {
                    path: path.clone(),
                    source,
                })?;
            Box::new(ConsoleFile::new(file, config.console_max_bytes))
        }
    })
}

/// A virtio device as the transport and as the event loop see it.
type VirtioPair = (Arc<Mutex<dyn VirtioDevice>>, Subscriber);

/// The configured virtio devices, in the order the guest sees them (their
/// MMIO slots and `virtio_mmio.device=` switches follow this order).
///
/// # Errors
/// A [`BuildMicrovmError`] if a device's back end cannot be set up.
pub fn create_virtio_devices(config: &VmConfig) -> Result<Vec<VirtioPair>, BuildMicrovmError> {
    let wanted = &config.devices;
    let mut devices: Vec<VirtioPair> = Vec::new();
    for disk in &wanted.disks {
        let block = Arc::new(Mutex::new(Block::new(&disk.path, disk.readonly)?));
        devices.push((block.clone(), block));
    }
    for net in &wanted.nets {
        let device = Arc::new(Mutex::new(Net::with_tap(net)?));
        devices.push((device.clone(), device));
    }
    if let Some(vsock) = &wanted.vsock {
        let device = Arc::new(Mutex::new(Vsock::new(u64::from(vsock.cid), &vsock.socket)?));
        devices.push((device.clone(), device));
    }
    for share in &wanted.fs {
        let device = Arc::new(Mutex::new(Fs::new(&share.tag, &share.dir, share.readonly)?));
        devices.push((device.clone(), device));
    }
    if config.rng {
        let rng = Arc::new(Mutex::new(Entropy::new()?));
        devices.push((rng.clone(), rng));
    }
    Ok(devices)
}

/// The legacy devices a snapshot holds.
#[derive(Debug, Clone)]
pub struct LegacyDevices {
    /// COM1.
    pub serial: Arc<Mutex<SerialDevice>>,
    /// The i8042 controller.
    pub i8042: Arc<Mutex<I8042>>,
}

/// The legacy devices on their buses: COM1, i8042, boot timer; COM1 and
/// the i8042 as `saved` left them, when restoring.
///
/// # Errors
/// A [`BuildMicrovmError`] if an interrupt or bus slot cannot be set up,
/// or the saved serial state cannot be applied.
pub fn attach_legacy_devices(
    vm: &Vm,
    pio: &mut Bus,
    mmio: &mut Bus,
    serial_out: SerialOutput,
    exit: &ExitNotifier,
    launched: Instant,
    saved: Option<(&SerialDeviceState, &I8042State)>,
) -> Result<LegacyDevices, BuildMicrovmError> {
    let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(BuildMicrovmError::EventFd)?;
    vm.register_irqfd(&serial_irq, SERIAL_GSI)?;
    let trigger = EventFdTrigger::new(serial_irq);
    let mut i8042 = I8042::new(exit.clone());
    let serial = match saved {
        Some((serial, i8042_state)) => {
            i8042.restore_state(i8042_state);
            SerialDevice::from_state(trigger, serial_out, serial)
                .map_err(BuildMicrovmError::SerialState)?
        }
        None => SerialDevice::new(trigger, serial_out),
    };
    let devices = LegacyDevices {
        serial: Arc::new(Mutex::new(serial)),
        i8042: Arc::new(Mutex::new(i8042)),
    };
    pio.insert(
        devices.serial.clone(),
        u64::from(SERIAL_PORT_BASE),
        u64::from(SERIAL_PORT_LEN),
    )?;
    pio.insert(
        devices.i8042.clone(),
        u64::from(I8042_DATA_PORT),
        u64::from(I8042_PORT_LEN),
    )?;
    mmio.insert(
        Arc::new(Mutex::new(BootTimer::new(launched))),
        BOOT_TIMER_START,
        MMIO_WINDOW_SIZE,
    )?;
    Ok(devices)
}

/// Builds a microVM ready to start, from a checked configuration.
/// `launched` is when the VMM started, for the boot timer.
///
/// # Errors
/// A [`BuildMicrovmError`]; [`BuildMicrovmError::is_input_error`] tells
/// whether the configuration is at fault.
pub fn build_microvm(config: &VmConfig, launched: Instant) -> Result<Microvm, BuildMicrovmError> {
    let kvm = KvmContext::open()?;
    tracing::debug!("/dev/kvm open after {:?}", launched.elapsed());
    if usize::from(config.vcpus) > kvm.max_vcpus() {
        return Err(BuildMicrovmError::TooManyVcpus {
            asked: config.vcpus,
            max: kvm.max_vcpus(),
        });
    }
    let mem = create_guest_memory(config.memory_mib << 20)?;

    let (template, kernel, initrd) = probe_and_load(&kvm, &mem, config)?;
    tracing::debug!("probe and images done after {:?}", launched.elapsed());

    let virtio = create_virtio_devices(config)?;
    let slots = allocate_slots(virtio.len())?;
    let switches: Vec<String> = slots.iter().map(|slot| slot.cmdline_switch()).collect();
    let cmdline = build_cmdline(&config.cmdline, template, &switches)?;
    let cmdline_len = cmdline
        .as_cstring()
        .map_err(|e| BuildMicrovmError::CmdlineInvalid(e.into()))?
        .as_bytes()
        .len();
    load_cmdline(&mem, GuestAddress(CMDLINE_START), &cmdline)
        .map_err(|e| BuildMicrovmError::CmdlineInvalid(e.into()))?;
    write_boot_params(
        &mem,
        kernel.entry.protocol,
        kernel.setup_header,
        cmdline_len,
        initrd,
    )?;
    write_boot_tables(&mem, kernel.entry.protocol)?;
    setup_mptable(&mem, config.vcpus)?;

    // Created only once the input is known to be good, so that a rejected
    // launch leaves no empty console file behind.
    let serial_out = serial_output(config)?;
    let vm = Vm::new(&kvm, &mem)?;
    tracing::debug!("VM created after {:?}", launched.elapsed());
    let exit = ExitNotifier::new();
    let mut pio = Bus::new();
    let mut mmio = Bus::new();
    let legacy =
        attach_legacy_devices(&vm, &mut pio, &mut mmio, serial_out, &exit, launched, None)?;
    let mut subscribers = Vec::with_capacity(virtio.len());
    let mut transports = Vec::with_capacity(virtio.len());
    for (slot, (device, subscriber)) in slots.into_iter().zip(virtio) {
        transports.push(attach_virtio_device(&vm, &mut mmio, &mem, slot, device)?);
        subscribers.push(subscriber);
    }

    let vcpus = create_vcpus(&kvm, &vm, template, config.vcpus, &kernel)?;
    tracing::debug!("vCPUs configured after {:?}", launched.elapsed());
    Ok(Microvm::new(MicrovmParts {
        vm,
        mem,
        vcpus,
        pio,
        mmio,
        exit,
        config: config.clone(),
        cpu_template: template,
        cmdline: cmdline_text(&cmdline),
        devices: subscribers,
        transports,
        legacy,
    }))
}

fn lock<T: ?Sized>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn cmdline_text(cmdline: &Cmdline) -> String {
    cmdline
        .as_cstring()
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Resolves the CPU template while the kernel and initrd load: the probe
/// takes milliseconds where CPL0 is emulated, and overlaps with loading.
fn probe_and_load(
    kvm: &KvmContext,
    mem: &GuestMemoryMmap,
    config: &VmConfig,
) -> Result<(CpuTemplate, LoadedKernel, Option<InitrdRegion>), BuildMicrovmError> {
    let (template, images) = std::thread::scope(|s| {
        let probe = s.spawn(|| resolve_cpu_template(kvm, config.cpu_template));
        let images = load_images(mem, config);
        let template = probe
            .join()
            .unwrap_or_else(|_| Err(ProbeError::UnexpectedExit("probe panicked".into()).into()));
        (template, images)
    });
    let template = template?;
    let (kernel, initrd) = images?;
    if template == CpuTemplate::EmulatedSupervisor && config.vcpus > 1 {
        tracing::warn!(
            "on hosts that emulate guest CPL0 a secondary vCPU never leaves INIT/SIPI: \
             expect the guest to stall at SMP bring-up; use --vcpus 1 here"
        );
    }
    Ok((template, kernel, initrd))
}

/// Creates `count` vCPUs with the CPUID of `template`; the first starts at
/// the kernel's entry point.
fn create_vcpus(
    kvm: &KvmContext,
    vm: &Vm,
    template: CpuTemplate,
    count: u8,
    kernel: &LoadedKernel,
) -> Result<Vec<Vcpu>, BuildMicrovmError> {
    let mut vcpus = Vec::with_capacity(usize::from(count));
    for index in 0..count {
        let vcpu = Vcpu::new(vm, index)?;
        let cpuid = build_vcpu_cpuid(kvm.supported_cpuid(), template, index, count)?;
        vcpu.configure(&cpuid, (index == 0).then_some(kernel.entry))?;
        vcpus.push(vcpu);
    }
    Ok(vcpus)
}

fn load_images(
    mem: &GuestMemoryMmap,
    config: &VmConfig,
) -> Result<(LoadedKernel, Option<InitrdRegion>), BuildMicrovmError> {
    let kernel = load_kernel(mem, &config.kernel)?;
    let initrd = match &config.initrd {
        Some(path) => Some(load_initrd(mem, path, kernel.end)?),
        None => None,
    };
    Ok((kernel, initrd))
}
