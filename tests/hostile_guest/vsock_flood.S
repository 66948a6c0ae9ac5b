/* SPDX-License-Identifier: Apache-2.0
 *
 * A hostile guest kernel that floods its vsock device's transmit queue.
 *
 * Booted by vmpod-vm through the PVH entry (32-bit protected mode, paging
 * off). It finds the virtio-mmio vsock device, drives it to DRIVER_OK with
 * three 256-entry queues, posts no receive buffers, and then keeps the
 * transmit queue full for ever: every turn it sets avail.idx to used.idx +
 * 256, every entry naming the same descriptor, a stream packet to host
 * port 1024 with a 64 KiB payload on no connection, and notifies. It
 * prints "vsock flood: started" on COM1, then a '.' each time the device's
 * used.idx passes a multiple of 4096 (4096 packets, 256 MiB of payload
 * read by the host).
 *
 * Built by the test: as --64 (the code is .code32), then
 * ld -m elf_x86_64 -Ttext=0x100000 for an ELF64 image vmpod-vm loads.
 */

.equ COM1, 0x3f8
.equ MMIO_FIRST, 0xc0001000
.equ MMIO_WINDOW, 0x1000
.equ MMIO_WINDOWS, 32
.equ VIRTIO_MAGIC, 0x74726976 /* "virt" */
.equ VIRTIO_ID_VSOCK, 19

/* virtio-mmio registers (virtio 1.2, 4.2.2). */
.equ REG_MAGIC, 0x000
.equ REG_DEVICE_ID, 0x008
.equ REG_DRIVER_FEATURES, 0x020
.equ REG_DRIVER_FEAT_SEL, 0x024
.equ REG_QUEUE_SEL, 0x030
.equ REG_QUEUE_NUM, 0x038
.equ REG_QUEUE_READY, 0x044
.equ REG_QUEUE_NOTIFY, 0x050
.equ REG_STATUS, 0x070
.equ REG_QUEUE_DESC, 0x080
.equ REG_QUEUE_AVAIL, 0x090
.equ REG_QUEUE_USED, 0x0a0
.equ REG_CONFIG, 0x100

.equ QUEUE_SIZE, 256
.equ TX, 1

/* Queue i's rings: descriptors at RINGS + i * 0x10000, avail 4 KiB above,
 * used 8 KiB above. */
.equ RINGS, 0x200000
.equ TX_DESC, (RINGS + TX * 0x10000)
.equ TX_AVAIL, (TX_DESC + 0x1000)
.equ TX_USED, (TX_DESC + 0x2000)
/* The one packet: a 44-byte header, then the payload. */
.equ PACKET, 0x300000
.equ PAYLOAD_LEN, 65536
.equ HEADER_LEN, 44

    .code32
    .text
    .globl _start
_start:
    cli
    mov $0x80000, %esp

    /* Zero the rings (guest memory may hold the initrd's bytes). */
    mov $RINGS, %edi
    mov $(3 * 0x10000 / 4), %ecx
    xor %eax, %eax
    rep stosl

    /* Find the vsock device. */
    mov $MMIO_FIRST, %esi
    mov $MMIO_WINDOWS, %ecx
find:
    cmpl $VIRTIO_MAGIC, REG_MAGIC(%esi)
    jne next
    cmpl $VIRTIO_ID_VSOCK, REG_DEVICE_ID(%esi)
    je found
next:
    add $MMIO_WINDOW, %esi
    loop find
    mov $no_device, %ebx
    call print
    jmp halt

found:
    movl $0, REG_STATUS(%esi)             /* reset */
    movl $1, REG_STATUS(%esi)             /* ACKNOWLEDGE */
    movl $3, REG_STATUS(%esi)             /* | DRIVER */
    movl $1, REG_DRIVER_FEAT_SEL(%esi)
    movl $1, REG_DRIVER_FEATURES(%esi)    /* VIRTIO_F_VERSION_1 (bit 32) */
    movl $0, REG_DRIVER_FEAT_SEL(%esi)
    movl $0, REG_DRIVER_FEATURES(%esi)
    movl $0xb, REG_STATUS(%esi)           /* | FEATURES_OK */

    xor %ebx, %ebx
queue:
    mov %ebx, REG_QUEUE_SEL(%esi)
    movl $QUEUE_SIZE, REG_QUEUE_NUM(%esi)
    mov %ebx, %eax
    shl $16, %eax
    add $RINGS, %eax
    mov %eax, REG_QUEUE_DESC(%esi)
    movl $0, REG_QUEUE_DESC + 4(%esi)
    add $0x1000, %eax
    mov %eax, REG_QUEUE_AVAIL(%esi)
    movl $0, REG_QUEUE_AVAIL + 4(%esi)
    add $0x1000, %eax
    mov %eax, REG_QUEUE_USED(%esi)
    movl $0, REG_QUEUE_USED + 4(%esi)
    movl $1, REG_QUEUE_READY(%esi)
    inc %ebx
    cmp $3, %ebx
    jne queue
    movl $0xf, REG_STATUS(%esi)           /* | DRIVER_OK */

    /* The packet's header: from our CID, to the host's port 1024, a
     * stream RW of PAYLOAD_LEN bytes on a connection that does not exist
     * (each one earns a reset the guest never takes). */
    mov REG_CONFIG(%esi), %eax
    mov %eax, PACKET + 0                  /* src_cid */
    mov REG_CONFIG + 4(%esi), %eax
    mov %eax, PACKET + 4
    movl $2, PACKET + 8                   /* dst_cid: the host */
    movl $0, PACKET + 12
    movl $5000, PACKET + 16               /* src_port */
    movl $1024, PACKET + 20               /* dst_port */
    movl $PAYLOAD_LEN, PACKET + 24        /* len */
    movw $1, PACKET + 28                  /* type: stream */
    movw $5, PACKET + 30                  /* op: RW */
    movl $0, PACKET + 32                  /* flags */
    movl $0, PACKET + 36                  /* buf_alloc */
    movl $0, PACKET + 40                  /* fwd_cnt */

    /* Descriptor 0: the whole packet; every avail entry is 0 already. */
    movl $PACKET, TX_DESC + 0
    movl $0, TX_DESC + 4
    movl $(HEADER_LEN + PAYLOAD_LEN), TX_DESC + 8
    movl $0, TX_DESC + 12
    movw $1, TX_AVAIL                     /* VIRTQ_AVAIL_F_NO_INTERRUPT */

    mov $started, %ebx
    call print

    xor %edi, %edi                        /* used.idx seen last */
flood:
    movzwl TX_USED + 2, %ecx
    lea QUEUE_SIZE(%ecx), %edx
    mov %dx, TX_AVAIL + 2
    movl $TX, REG_QUEUE_NOTIFY(%esi)
    xor %ecx, %edi
    test $0xf000, %edi
    jz same_block
    mov $COM1, %dx
    mov $'.', %al
    out %al, %dx
same_block:
    mov %ecx, %edi
    jmp flood

halt:
    hlt
    jmp halt

/* Writes the NUL-terminated string at %ebx to COM1. */
print:
    mov $COM1, %dx
1:  mov (%ebx), %al
    test %al, %al
    jz 2f
    out %al, %dx
    inc %ebx
    jmp 1b
2:  ret

started:
    .asciz "vsock flood: started\n"
no_device:
    .asciz "vsock flood: no vsock device\n"

/* The PVH entry point (XEN_ELFNOTE_PHYS32_ENTRY), so vmpod-vm enters in
 * 32-bit protected mode. */
    .section .note.pvh, "a", @note
    .balign 4
    .long 4, 4, 18
    .asciz "Xen"
    .long _start
