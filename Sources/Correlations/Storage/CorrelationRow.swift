/// One row of the stored correlations view: the correlations of the symbol with index `i`
/// (``CorrelationsTransaction/symbolsByIndex()``) with every symbol of a lower index, over
/// one window — cell `j` is the pair `(i, j)` — and, in cell `i`, its diagonal. One row per (window, symbol) instead of one
/// per pair: a batch that moves a few hundred symbols rewrites a few hundred rows per window
/// rather than a hundred thousand pairs, each an upsert of its own (what made the worker
/// apply about 200 `returns_calculated`/s on 500 symbols).
///
/// A cell is 16 bytes, little-endian: Pearson's r as a `Double` (NaN: `null`), the number of
/// common returns used as an `Int32`, and the as-of day as an `Int32` (`Int32.min`: none).
/// A cell never computed reads as `null` with 0 observations.
///
/// Stored, a row whose cells all share their observations and as-of day — every row of a
/// backfill on one calendar, and most rows once a day is in — is *compact*: 8 bytes per cell
/// (the values) in `cells`, and the 8 bytes they share (observations, as-of day) in `shared`;
/// otherwise `shared` is `NULL` and `cells` holds the 16-byte cells. Half the bytes to write
/// and read for the common case.
public struct CorrelationRow: Sendable {
    static let cellSize = 16
    private static let noDay = Int32.min

    /// The encoded cells: 16 bytes each, or 8 (the values) when `shared` holds the rest.
    private(set) var bytes: [UInt8]
    /// The observations and as-of day of every cell of a compact row, as stored.
    private var shared: UInt64?

    /// A row of `count` cells never computed.
    init(count: Int) {
        bytes = [UInt8](unsafeUninitializedCapacity: count * Self.cellSize) { buffer, initialized in
            let raw = UnsafeMutableRawBufferPointer(buffer)
            let never = PairCorrelation(value: nil, observations: 0, asOfDay: nil)
            for j in 0..<count { Self.store(never, at: j * Self.cellSize, in: raw) }
            initialized = count * Self.cellSize
        }
    }

    /// A stored row (`cells` and `shared` as in the table); cells past its end (none is ever
    /// missing in a row written here) read as never computed. A `shared` of another size than
    /// 8 bytes reads as none.
    init(cells: [UInt8], shared: [UInt8]?) {
        bytes = cells
        if let shared, shared.count == 8 {
            self.shared = shared.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
        }
    }

    private var stride: Int { shared == nil ? Self.cellSize : 8 }

    var count: Int { bytes.count / stride }

    /// Cell `j`.
    subscript(j: Int) -> PairCorrelation {
        get {
            guard j < count else { return PairCorrelation(value: nil, observations: 0, asOfDay: nil) }
            return bytes.withUnsafeBytes { Self.load(at: j * stride, shared: shared, in: $0) }
        }
        set {
            if shared != nil { expand() }
            if j >= count { bytes += CorrelationRow(count: j + 1 - count).bytes }
            bytes.withUnsafeMutableBytes { raw in Self.store(newValue, at: j * Self.cellSize, in: raw) }
        }
    }

    /// Calls `body` with the row's 16-byte cells to set (``UnsafeCells``), for loops that set
    /// many cells of a row.
    mutating func withUnsafeCells<R>(_ body: (UnsafeCells) throws -> R) rethrows -> R {
        if shared != nil { expand() }
        return try bytes.withUnsafeMutableBytes { try body(UnsafeCells(raw: $0)) }
    }

    /// The 16-byte cells of a row being filled (see ``withUnsafeCells(_:)``): valid only in
    /// that call.
    struct UnsafeCells {
        let raw: UnsafeMutableRawBufferPointer
        var count: Int { raw.count / CorrelationRow.cellSize }

        subscript(j: Int) -> PairCorrelation {
            get {
                precondition(j < count)
                return CorrelationRow.load(at: j * CorrelationRow.cellSize, shared: nil, in: UnsafeRawBufferPointer(raw))
            }
            nonmutating set {
                precondition(j < count)
                CorrelationRow.store(newValue, at: j * CorrelationRow.cellSize, in: raw)
            }
        }
    }

    /// The row as it is stored: compact when every cell has the same observations and as-of
    /// day (and there is more than one cell), else the 16-byte cells.
    func encoded() -> (cells: [UInt8], shared: [UInt8]?) {
        if let shared { return (bytes, Self.littleEndianBytes(shared)) }
        let n = count
        guard n > 1 else { return (bytes, nil) }
        return bytes.withUnsafeBytes { raw in
            let first = raw.loadUnaligned(fromByteOffset: 8, as: UInt64.self)
            for j in 1..<n where raw.loadUnaligned(fromByteOffset: j * Self.cellSize + 8, as: UInt64.self) != first {
                return (bytes, nil)
            }
            let values = [UInt8](unsafeUninitializedCapacity: n * 8) { out, initialized in
                let to = UnsafeMutableRawBufferPointer(out)
                for j in 0..<n {
                    to.storeBytes(of: raw.loadUnaligned(fromByteOffset: j * Self.cellSize, as: UInt64.self),
                                  toByteOffset: j * 8, as: UInt64.self)
                }
                initialized = n * 8
            }
            return (values, Self.littleEndianBytes(UInt64(littleEndian: first)))
        }
    }

    /// Back to 16-byte cells.
    private mutating func expand() {
        guard let rest = shared else { return }
        let n = bytes.count / 8
        bytes = bytes.withUnsafeBytes { values in
            [UInt8](unsafeUninitializedCapacity: n * Self.cellSize) { out, initialized in
                let to = UnsafeMutableRawBufferPointer(out)
                for j in 0..<n {
                    to.storeBytes(of: values.loadUnaligned(fromByteOffset: j * 8, as: UInt64.self),
                                  toByteOffset: j * Self.cellSize, as: UInt64.self)
                    to.storeBytes(of: rest.littleEndian, toByteOffset: j * Self.cellSize + 8, as: UInt64.self)
                }
                initialized = n * Self.cellSize
            }
        }
        shared = nil
    }

    private static func littleEndianBytes(_ value: UInt64) -> [UInt8] {
        withUnsafeBytes(of: value.littleEndian) { Array($0) }
    }

    /// The cell at `offset`: its value, and its observations and as-of day from `shared` when
    /// the row is compact, else from the 8 bytes after the value.
    fileprivate static func load(at offset: Int, shared: UInt64?, in raw: UnsafeRawBufferPointer) -> PairCorrelation {
        let value = Double(bitPattern: UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: offset, as: UInt64.self)))
        let rest = shared ?? UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: offset + 8, as: UInt64.self))
        let observations = Int32(truncatingIfNeeded: rest), day = Int32(truncatingIfNeeded: rest >> 32)
        return PairCorrelation(value: value.isNaN ? nil : value, observations: Int(observations),
                               asOfDay: day == noDay ? nil : day)
    }

    fileprivate static func store(_ cell: PairCorrelation, at offset: Int, in raw: UnsafeMutableRawBufferPointer) {
        raw.storeBytes(of: (cell.value ?? .nan).bitPattern.littleEndian, toByteOffset: offset, as: UInt64.self)
        raw.storeBytes(of: Int32(clamping: cell.observations).littleEndian, toByteOffset: offset + 8, as: Int32.self)
        raw.storeBytes(of: (cell.asOfDay ?? noDay).littleEndian, toByteOffset: offset + 12, as: Int32.self)
    }
}
