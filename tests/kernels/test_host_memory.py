"""kernels.host_memory: large buffers in their own huge-page mapping, small ones plain."""
import torch

from kernels import host_memory


def _mapping_of(address: int) -> str | None:
    """The /proc/self/smaps entry (header and fields) of the mapping holding address."""
    with open("/proc/self/smaps") as f:
        entry, inside = [], False
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                if inside:
                    return "".join(entry)
                lo, hi = (int(x, 16) for x in head.split("-"))
                entry, inside = [line], lo <= address < hi
            else:
                entry.append(line)
    return "".join(entry) if inside else None


def test_small_and_odd_sizes_are_plain_tensors():
    for shape, dtype in [((7,), torch.uint8), ((3, 5), torch.bfloat16), ((1023, 1024), torch.uint8)]:
        t = host_memory.empty(shape, dtype)
        assert t.shape == shape and t.dtype == dtype and t.is_contiguous()


def test_large_buffer_is_its_own_huge_page_mapping_and_is_unmapped_when_freed():
    rows = 3 * host_memory.HUGE_PAGE_BYTES // (4 * 1000) + 1
    t = host_memory.empty((rows, 1000), torch.float32)
    assert t.shape == (rows, 1000) and t.dtype == torch.float32 and t.is_contiguous()
    t.copy_(torch.arange(rows * 1000, dtype=torch.float32).view(rows, 1000))
    assert t[-1, -1].item() == rows * 1000 - 1 and t[0, 0].item() == 0  # every byte writable
    mapping = _mapping_of(t.data_ptr())
    assert mapping is not None and "hg" in mapping.split("VmFlags:")[1]  # madvise(MADV_HUGEPAGE)
    view = t[1:3]  # a view keeps the mapping alive
    address = t.data_ptr()
    del t
    assert view[0, 0].item() == 1000 and _mapping_of(address) is not None
    del view
    assert _mapping_of(address) is None
