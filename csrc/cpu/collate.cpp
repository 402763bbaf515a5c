// Host-side collation helpers for the data collator: Python lists of token ids straight into a
// padded tensor's memory, one C loop, no Python loop per row or per token. Python's limited API
// only (the extension is one abi3 wheel); the tensor is allocated by the caller, which passes
// its address.
// The buffer protocol joined the limited API in Python 3.11 (torch's flag says 3.10).
#ifdef Py_LIMITED_API
#undef Py_LIMITED_API
#endif
#define Py_LIMITED_API 0x030B0000
#include <Python.h>

#include <cstdint>
#include <cstring>

namespace mlmfast {
namespace {

// row_lengths(rows, lengths_address) -> max length; lengths[i] = len(rows[i]) as int64.
PyObject* row_lengths(PyObject*, PyObject* args) {
  PyObject* rows;
  unsigned long long addr;
  if (!PyArg_ParseTuple(args, "OK", &rows, &addr)) return nullptr;
  if (!PyList_Check(rows)) {
    PyErr_SetString(PyExc_TypeError, "row_lengths: rows must be a list");
    return nullptr;
  }
  int64_t* lengths = reinterpret_cast<int64_t*>(addr);
  const Py_ssize_t n = PyList_Size(rows);
  Py_ssize_t longest = 0;
  for (Py_ssize_t i = 0; i < n; ++i) {
    const Py_ssize_t len = PyObject_Length(PyList_GetItem(rows, i));  // borrowed item
    if (len < 0) return nullptr;
    lengths[i] = len;
    if (len > longest) longest = len;
  }
  return PyLong_FromSsize_t(longest);
}

// Copies a row that exposes a 1-D C-contiguous integer buffer (a numpy array, array.array).
// Returns 1 when done, 0 when the object has no usable buffer (the caller falls back to the
// sequence protocol), -1 on error.
template <typename T>
int fill_from_buffer(PyObject* row, Py_ssize_t len, T* dst) {
  if (!PyObject_CheckBuffer(row)) return 0;
  Py_buffer view;
  if (PyObject_GetBuffer(row, &view, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) != 0) {
    PyErr_Clear();
    return 0;
  }
  const char* f = view.format ? view.format : "B";
  if (*f == '<' || *f == '=' || *f == '@') ++f;
  const bool ok_shape = view.ndim == 1 && view.shape && view.shape[0] == len && f[0] && !f[1];
  int rc = 0;
  if (ok_shape) {
    rc = 1;
    const char c = f[0];
    const void* b = view.buf;
    if ((c == 'q' || c == 'l' || c == 'Q' || c == 'L') && view.itemsize == 8) {
      for (Py_ssize_t j = 0; j < len; ++j)
        dst[j] = static_cast<T>(static_cast<const int64_t*>(b)[j]);
    } else if ((c == 'i' || c == 'l') && view.itemsize == 4) {
      for (Py_ssize_t j = 0; j < len; ++j)
        dst[j] = static_cast<T>(static_cast<const int32_t*>(b)[j]);
    } else if ((c == 'I' || c == 'L') && view.itemsize == 4) {
      for (Py_ssize_t j = 0; j < len; ++j)
        dst[j] = static_cast<T>(static_cast<const uint32_t*>(b)[j]);
    } else if (c == 'h' && view.itemsize == 2) {
      for (Py_ssize_t j = 0; j < len; ++j)
        dst[j] = static_cast<T>(static_cast<const int16_t*>(b)[j]);
    } else if (c == 'H' && view.itemsize == 2) {
      for (Py_ssize_t j = 0; j < len; ++j)
        dst[j] = static_cast<T>(static_cast<const uint16_t*>(b)[j]);
    } else if (c == 'b' && view.itemsize == 1) {
      for (Py_ssize_t j = 0; j < len; ++j)
        dst[j] = static_cast<T>(static_cast<const int8_t*>(b)[j]);
    } else if ((c == 'B' || c == '?') && view.itemsize == 1) {
      for (Py_ssize_t j = 0; j < len; ++j)
        dst[j] = static_cast<T>(static_cast<const uint8_t*>(b)[j]);
    } else {
      PyErr_Format(PyExc_TypeError, "expected integer values, got buffer format '%s'", view.format);
      rc = -1;
    }
  }
  PyBuffer_Release(&view);
  return rc;
}

template <typename T>
int fill_row(PyObject* row, Py_ssize_t len, T* dst, bool none_is_pad, long long pad) {
  const bool list = PyList_Check(row), tuple = PyTuple_Check(row);
  if (!list && !tuple) {
    const int rc = fill_from_buffer<T>(row, len, dst);
    if (rc != 0) return rc < 0 ? -1 : 0;
  }
  for (Py_ssize_t j = 0; j < len; ++j) {
    PyObject* item = list ? PyList_GetItem(row, j)
                          : (tuple ? PyTuple_GetItem(row, j) : PySequence_GetItem(row, j));
    if (!item) return -1;
    const long long v = (none_is_pad && item == Py_None) ? pad : PyLong_AsLongLong(item);
    if (!list && !tuple) Py_DECREF(item);
    if (v == -1 && PyErr_Occurred()) return -1;
    dst[j] = static_cast<T>(v);
  }
  return 0;
}

// pack_rows(rows, address, length, element_size, pad_value, left, none_is_pad): rows[i] (a
// list/tuple/sequence of ints, at most `length` long) into row i of a contiguous
// [len(rows), length] buffer of int8/int32/int64 (element_size 1, 4, 8), padded with pad_value on
// the right (or the left); None entries become pad_value when none_is_pad (word_ids()).
PyObject* pack_rows(PyObject*, PyObject* args) {
  PyObject* rows;
  unsigned long long addr;
  Py_ssize_t length;
  int elem, left, none_is_pad;
  long long pad;
  if (!PyArg_ParseTuple(args, "OKniLpp", &rows, &addr, &length, &elem, &pad, &left, &none_is_pad))
    return nullptr;
  if (!PyList_Check(rows)) {
    PyErr_SetString(PyExc_TypeError, "pack_rows: rows must be a list");
    return nullptr;
  }
  if (elem != 1 && elem != 4 && elem != 8) {
    PyErr_SetString(PyExc_ValueError, "pack_rows: element_size must be 1, 4 or 8");
    return nullptr;
  }
  char* base = reinterpret_cast<char*>(addr);
  const Py_ssize_t n = PyList_Size(rows);
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* row = PyList_GetItem(rows, i);
    const Py_ssize_t len = PyObject_Length(row);
    if (len < 0) return nullptr;
    if (len > length) {
      PyErr_Format(PyExc_ValueError, "pack_rows: row %zd has %zd tokens, more than the length %zd",
                   i, len, length);
      return nullptr;
    }
    const Py_ssize_t off = left ? length - len : 0;
    char* row_base = base + static_cast<size_t>(i) * length * elem;
    int rc;
    if (elem == 8) {
      int64_t* d = reinterpret_cast<int64_t*>(row_base);
      for (Py_ssize_t j = 0; j < length - len; ++j) d[left ? j : len + j] = pad;
      rc = fill_row<int64_t>(row, len, d + off, none_is_pad, pad);
    } else if (elem == 4) {
      int32_t* d = reinterpret_cast<int32_t*>(row_base);
      for (Py_ssize_t j = 0; j < length - len; ++j)
        d[left ? j : len + j] = static_cast<int32_t>(pad);
      rc = fill_row<int32_t>(row, len, d + off, none_is_pad, pad);
    } else {
      int8_t* d = reinterpret_cast<int8_t*>(row_base);
      std::memset(left ? d : d + len, static_cast<int>(pad), static_cast<size_t>(length - len));
      rc = fill_row<int8_t>(row, len, d + off, none_is_pad, pad);
    }
    if (rc != 0) {
      PyObject *type, *value, *tb;
      PyErr_Fetch(&type, &value, &tb);
      PyErr_NormalizeException(&type, &value, &tb);
      PyObject* text = value ? PyObject_Str(value) : nullptr;
      const char* what = text ? PyUnicode_AsUTF8AndSize(text, nullptr) : nullptr;
      PyErr_Format(PyExc_TypeError, "row %zd holds a value that is not an integer (%s)", i,
                   what ? what : "?");
      Py_XDECREF(text);
      Py_XDECREF(type);
      Py_XDECREF(value);
      Py_XDECREF(tb);
      return nullptr;
    }
  }
  Py_RETURN_NONE;
}

// n elements of `elem` bytes at `at` set to `pad`.
void fill_pad(char* at, Py_ssize_t n, int elem, long long pad) {
  if (elem == 8) {
    for (Py_ssize_t j = 0; j < n; ++j) reinterpret_cast<int64_t*>(at)[j] = pad;
  } else if (elem == 4) {
    for (Py_ssize_t j = 0; j < n; ++j)
      reinterpret_cast<int32_t*>(at)[j] = static_cast<int32_t>(pad);
  } else {
    std::memset(at, static_cast<int>(pad), static_cast<size_t>(n));
  }
}

// gather_rows(values_address, values_count, starts_address, lengths_address, rows, address,
// length, element_size, pad_value, left): out row i = values[starts[i] : starts[i] + lengths[i]],
// padded to `length` with pad_value on the right (or the left); one memcpy per row. Serves rows
// picked in any order from an Arrow list column, and rows stored back to back (a concatenation).
// Every row is checked against the values buffer first: offsets read from a file never make it
// copy from outside that buffer, and a bad row leaves the output untouched.
PyObject* gather_rows(PyObject*, PyObject* args) {
  unsigned long long values_addr, starts_addr, len_addr, addr;
  Py_ssize_t count, n, length;
  int elem, left;
  long long pad;
  if (!PyArg_ParseTuple(args, "KnKKnKniLp", &values_addr, &count, &starts_addr, &len_addr, &n,
                        &addr, &length, &elem, &pad, &left))
    return nullptr;
  if (elem != 1 && elem != 4 && elem != 8) {
    PyErr_SetString(PyExc_ValueError, "gather_rows: element_size must be 1, 4 or 8");
    return nullptr;
  }
  const char* values = reinterpret_cast<const char*>(values_addr);
  const int64_t* starts = reinterpret_cast<const int64_t*>(starts_addr);
  const int64_t* lengths = reinterpret_cast<const int64_t*>(len_addr);
  char* out = reinterpret_cast<char*>(addr);
  for (Py_ssize_t i = 0; i < n; ++i) {
    if (lengths[i] < 0 || lengths[i] > length) {
      PyErr_Format(PyExc_ValueError, "gather_rows: row %zd has %lld elements, expected 0 to %zd", i,
                   static_cast<long long>(lengths[i]), length);
      return nullptr;
    }
    // no overflow: 0 <= lengths[i] <= length, and starts[i] is compared before the addition
    if (starts[i] < 0 || starts[i] > count || lengths[i] > count - starts[i]) {
      PyErr_Format(PyExc_ValueError,
                   "gather_rows: row %zd spans elements %lld to %lld, outside the %zd values", i,
                   static_cast<long long>(starts[i]),
                   static_cast<long long>(starts[i]) + static_cast<long long>(lengths[i]), count);
      return nullptr;
    }
  }
  for (Py_ssize_t i = 0; i < n; ++i) {
    const Py_ssize_t len = static_cast<Py_ssize_t>(lengths[i]);
    char* row = out + static_cast<size_t>(i) * length * elem;
    char* data = left ? row + (length - len) * elem : row;
    std::memcpy(data, values + static_cast<size_t>(starts[i]) * elem,
                static_cast<size_t>(len) * elem);
    fill_pad(left ? row : row + len * elem, length - len, elem, pad);
  }
  Py_RETURN_NONE;
}

PyMethodDef kMethods[] = {
    {"gather_rows", gather_rows, METH_VARARGS, "pick rows of a ragged column into a buffer"},
    {"row_lengths", row_lengths, METH_VARARGS, "lengths of a list of rows into an int64 buffer"},
    {"pack_rows", pack_rows, METH_VARARGS, "pad a list of integer rows into a buffer"},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

PyMethodDef* collate_methods() { return kMethods; }

}  // namespace mlmfast
