package vxlan

import (
	"encoding/binary"
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A minimal BPF assembler: just what the fast path's tc programs need,
// written as raw instructions so that Weft needs neither a compiler nor a
// BPF library at build or run time.

// bpfInsn is one struct bpf_insn.
type bpfInsn struct {
	code uint8
	regs uint8 // dst in the low nibble, src in the high
	off  int16
	imm  int32
}

func insn(code uint8, dst, src uint8, off int16, imm int32) bpfInsn {
	return bpfInsn{code: code, regs: src<<4 | dst, off: off, imm: imm}
}

// Opcodes (class | op | source) used by the programs.
const (
	opMovX   = 0xbf // r_dst = r_src
	opMovK   = 0xb7 // r_dst = imm
	opAddK   = 0x07
	opAndK   = 0x57
	opRshK   = 0x77
	opLdxW   = 0x61
	opLdxH   = 0x69
	opStW    = 0x62
	opStH    = 0x6a
	opJgtX   = 0x2d
	opJneK   = 0x55
	opJeqK   = 0x15
	opJne32K = 0x56 // 32-bit compare: w_dst != imm
	opJeq32K = 0x16 // 32-bit compare: w_dst == imm
	opCall   = 0x85
	opExit   = 0x95

	skbData    = 76 // offsetof(struct __sk_buff, data)
	skbDataEnd = 80

	fnRedirectNeigh = 152
	fnRedirectPeer  = 155
)

// loadProg loads a sched_cls program named name (at most 15 bytes) and
// returns its file descriptor. The verifier's log is part of the error.
func loadProg(name string, insns []bpfInsn) (int, error) {
	if len(insns) == 0 {
		return -1, fmt.Errorf("BPF_PROG_LOAD %s: no instructions", name)
	}
	license := []byte("GPL\x00")
	logBuf := make([]byte, 64<<10)
	var attr [128]byte
	binary.NativeEndian.PutUint32(attr[0:], unix.BPF_PROG_TYPE_SCHED_CLS)
	binary.NativeEndian.PutUint32(attr[4:], uint32(len(insns)))
	binary.NativeEndian.PutUint64(attr[8:], uint64(uintptr(unsafe.Pointer(&insns[0]))))
	binary.NativeEndian.PutUint64(attr[16:], uint64(uintptr(unsafe.Pointer(&license[0]))))
	binary.NativeEndian.PutUint32(attr[24:], 1)
	binary.NativeEndian.PutUint32(attr[28:], uint32(len(logBuf)))
	binary.NativeEndian.PutUint64(attr[32:], uint64(uintptr(unsafe.Pointer(&logBuf[0]))))
	copy(attr[48:48+15], name)
	fd, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_PROG_LOAD, uintptr(unsafe.Pointer(&attr[0])), uintptr(len(attr)))
	runtime.KeepAlive(insns)
	runtime.KeepAlive(license)
	runtime.KeepAlive(logBuf)
	if errno != 0 {
		return -1, fmt.Errorf("BPF_PROG_LOAD %s: %w: %s", name, errno, logBuf[:clen(logBuf)])
	}
	return int(fd), nil
}

// progID returns the kernel's id of the program behind fd, as netlink
// reports it for an attached filter.
func progID(fd int) (int, error) {
	var info [256]byte // struct bpf_prog_info; id is at offset 4
	var attr [16]byte
	binary.NativeEndian.PutUint32(attr[0:], uint32(fd))
	binary.NativeEndian.PutUint32(attr[4:], uint32(len(info)))
	binary.NativeEndian.PutUint64(attr[8:], uint64(uintptr(unsafe.Pointer(&info[0]))))
	_, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_OBJ_GET_INFO_BY_FD, uintptr(unsafe.Pointer(&attr[0])), uintptr(len(attr)))
	runtime.KeepAlive(&info)
	if errno != 0 {
		return 0, fmt.Errorf("BPF_OBJ_GET_INFO_BY_FD: %w", errno)
	}
	return int(binary.NativeEndian.Uint32(info[4:])), nil
}

func clen(b []byte) int {
	for i, c := range b {
		if c == 0 {
			return i
		}
	}
	return len(b)
}

// le returns the first four bytes of b (zero padded) as the immediate
// that compares equal to a 32-bit load of those bytes from a packet (a
// load is in the machine's byte order).
func le(b []byte) int32 {
	var x [4]byte
	copy(x[:], b)
	return int32(binary.NativeEndian.Uint32(x[:]))
}

// More opcodes for the map-based program.
const (
	opLdImm64       = 0x18 // r_dst = imm64 (two instructions); src 1: a map fd
	opStxW          = 0x63 // *(u32 *)(r_dst + off) = r_src
	opStxH          = 0x6b
	fnMapLookupElem = 1
	pseudoMapFD     = 1
)

// ldMapFD returns the two instructions loading map fd into register dst.
func ldMapFD(dst uint8, fd int) []bpfInsn {
	return []bpfInsn{insn(opLdImm64, dst, pseudoMapFD, 0, int32(fd)), {}}
}

// bpfAttrCall runs bpf(cmd, attr).
func bpfAttrCall(cmd uintptr, attr []byte) (uintptr, error) {
	r, _, errno := unix.Syscall(unix.SYS_BPF, cmd, uintptr(unsafe.Pointer(&attr[0])), uintptr(len(attr)))
	runtime.KeepAlive(attr)
	if errno != 0 {
		return 0, errno
	}
	return r, nil
}

// createHashMap creates a BPF hash map and returns its file descriptor.
func createHashMap(name string, keySize, valueSize, maxEntries int) (int, error) {
	var attr [64]byte
	binary.NativeEndian.PutUint32(attr[0:], unix.BPF_MAP_TYPE_HASH)
	binary.NativeEndian.PutUint32(attr[4:], uint32(keySize))
	binary.NativeEndian.PutUint32(attr[8:], uint32(valueSize))
	binary.NativeEndian.PutUint32(attr[12:], uint32(maxEntries))
	copy(attr[28:28+15], name)
	fd, err := bpfAttrCall(unix.BPF_MAP_CREATE, attr[:])
	if err != nil {
		return -1, fmt.Errorf("BPF_MAP_CREATE %s: %w", name, err)
	}
	return int(fd), nil
}

// mapUpdate sets key to value in the map behind fd.
func mapUpdate(fd int, key, value []byte) error {
	var attr [32]byte
	binary.NativeEndian.PutUint32(attr[0:], uint32(fd))
	binary.NativeEndian.PutUint64(attr[8:], uint64(uintptr(unsafe.Pointer(&key[0]))))
	binary.NativeEndian.PutUint64(attr[16:], uint64(uintptr(unsafe.Pointer(&value[0]))))
	_, err := bpfAttrCall(unix.BPF_MAP_UPDATE_ELEM, attr[:])
	runtime.KeepAlive(key)
	runtime.KeepAlive(value)
	if err != nil {
		return fmt.Errorf("BPF_MAP_UPDATE_ELEM: %w", err)
	}
	return nil
}

// mapDelete removes key from the map behind fd.
func mapDelete(fd int, key []byte) error {
	var attr [32]byte
	binary.NativeEndian.PutUint32(attr[0:], uint32(fd))
	binary.NativeEndian.PutUint64(attr[8:], uint64(uintptr(unsafe.Pointer(&key[0]))))
	_, err := bpfAttrCall(unix.BPF_MAP_DELETE_ELEM, attr[:])
	runtime.KeepAlive(key)
	if err != nil && err != unix.ENOENT {
		return fmt.Errorf("BPF_MAP_DELETE_ELEM: %w", err)
	}
	return nil
}
