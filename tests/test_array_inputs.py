"""numpy arrays as map inputs: each task's input is its row, a byte range of the array's
own buffer inside one pickle template, not a pickle made per element."""
import pickle

import numpy as np
import pytest

from cloudbutton_executor import serialize


def row_sum(row):
    return row.dtype.str, row.shape, row.sum().item(), row.flags.writeable


@pytest.mark.parametrize("arr", [
    np.arange(60, dtype=np.float64).reshape(12, 5),
    np.arange(48, dtype=np.int8).reshape(4, 3, 4),              # rows of 2-D
    (np.arange(30) % 3 == 0).reshape(10, 3),                     # bool
    (np.arange(20) + 1j).astype(np.complex64).reshape(4, 5),
    np.arange(40, dtype=">i4").reshape(8, 5),                    # big-endian
], ids=["f8", "i1-3d", "bool", "c8", "big-endian"])
def test_rows_travel_as_slices_of_the_arrays_buffer(arr, ex):
    payloads = serialize.dumps_array_rows(arr)
    assert payloads is not None and len(payloads) == len(arr)
    for i, p in enumerate(payloads):
        assert isinstance(p, serialize.Pieces) and len(p.parts) == 3
        row = p.parts[1]
        assert isinstance(row, memoryview) and row.nbytes == arr[i].nbytes
        assert np.shares_memory(np.frombuffer(row, dtype=np.uint8), arr)  # not a copy
        (got,), kwargs = pickle.loads(serialize.join([p]))
        assert kwargs == {} and got.dtype == arr.dtype and np.array_equal(got, arr[i])
    out = ex.map(row_sum, arr).result(timeout=60)
    assert out == [(r.dtype.str, r.shape, r.sum().item(), True) for r in arr]


@pytest.mark.parametrize("arr", [
    np.arange(10.0),                                  # 1-D: rows are numpy scalars
    np.asfortranarray(np.arange(12.0).reshape(3, 4)),  # not C-contiguous
    np.array([["a", "b"], ["c", "d"]]),               # text is screened the usual way
    np.empty((0, 3)),
    np.array([[1, None]], dtype=object),
    [np.arange(3.0)],                                 # a list is no array
], ids=["1d", "fortran", "str", "empty", "object", "list"])
def test_other_inputs_take_the_usual_path(arr, ex):
    assert serialize.dumps_array_rows(arr) is None
    if len(arr):
        out = ex.map(lambda r: np.asarray(r).tolist(), arr).result(timeout=60)
        assert out == [np.asarray(r).tolist() for r in arr]
