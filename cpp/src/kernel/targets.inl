// Fragment: the target policies. Each says which rows are ignored and lists a
// row's entry targets (class j, q_j) beyond the dense part of q; RowKernel and
// drive() take one as a template parameter.
// Included inside an ISA namespace by kernels_<isa>.cpp (through isa_unit.inl).
// Needs in scope: Params<T> (row_math.inl), Problem<T>.

// Entry targets: a list of (class, q_j) per row beyond the dense part.
template <class T>
struct NoEntries {
  static constexpr bool kMany = false;  // many entries per row (see drive)
  bool ignored(int64_t) const { return false; }
  template <class F> void for_each(int64_t, F&&) const {}
};

template <class T, class I>
struct IndexEntries {
  static constexpr bool kMany = false;
  const Params<T>& pr;
  const I* idx;
  int64_t stride;
  bool ignored(int64_t i) const { return int64_t(idx[i * stride]) == pr.p->ignore_index; }
  template <class F> void for_each(int64_t i, F&& f) const {
    // A global class (vocabulary shards): only the shard holding it has the entry.
    const int64_t c = int64_t(idx[i * stride]) - pr.p->class_offset;
    if (uint64_t(c) >= uint64_t(pr.p->classes)) return;
    const double w = pr.p->weight ? double(pr.p->weight[c]) : 1.0;
    f(c, double(pr.a) * w);
  }
};

template <class T>
struct SparseEntries {
  static constexpr bool kMany = true;
  const Params<T>& pr;
  bool ignored(int64_t) const { return false; }
  template <class F> void for_each(int64_t i, F&& f) const {
    const Problem<T>& p = *pr.p;
    for (int64_t k = p.sparse_indptr[i]; k < p.sparse_indptr[i + 1]; ++k) {
      const int64_t c = p.sparse_indices[k];
      const double v = p.sparse_values ? double(p.sparse_values[k]) : 1.0;
      const double w = p.weight ? double(p.weight[c]) : 1.0;
      f(c, double(pr.a) * w * v);
    }
  }
};
