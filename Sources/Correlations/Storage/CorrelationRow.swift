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
public struct CorrelationRow: Sendable {
    static let cellSize = 16
    private static let noDay = Int32.min

    /// The encoded cells.
    private(set) var bytes: [UInt8]

    /// A row of `count` cells never computed.
    init(count: Int) {
        bytes = [UInt8](unsafeUninitializedCapacity: count * Self.cellSize) { buffer, initialized in
            let raw = UnsafeMutableRawBufferPointer(buffer)
            let never = PairCorrelation(value: nil, observations: 0, asOfDay: nil)
            for j in 0..<count { Self.store(never, at: j * Self.cellSize, in: raw) }
            initialized = count * Self.cellSize
        }
    }

    /// An empty row with room for `capacity` cells, to ``append(_:)`` them.
    init(capacity: Int) {
        bytes = []
        bytes.reserveCapacity(capacity * Self.cellSize)
    }

    /// A stored row; cells past its end (none is ever missing in a row written here) read as
    /// never computed.
    init(bytes: [UInt8]) { self.bytes = bytes }

    var count: Int { bytes.count / Self.cellSize }

    /// Cell `j`.
    subscript(j: Int) -> PairCorrelation {
        get {
            guard j < count else { return PairCorrelation(value: nil, observations: 0, asOfDay: nil) }
            return bytes.withUnsafeBytes { raw in
                let offset = j * Self.cellSize
                let value = Double(bitPattern: UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: offset, as: UInt64.self)))
                let observations = Int32(littleEndian: raw.loadUnaligned(fromByteOffset: offset + 8, as: Int32.self))
                let day = Int32(littleEndian: raw.loadUnaligned(fromByteOffset: offset + 12, as: Int32.self))
                return PairCorrelation(value: value.isNaN ? nil : value, observations: Int(observations),
                                       asOfDay: day == Self.noDay ? nil : day)
            }
        }
        set {
            if j >= count { bytes += CorrelationRow(count: j + 1 - count).bytes }
            bytes.withUnsafeMutableBytes { raw in Self.store(newValue, at: j * Self.cellSize, in: raw) }
        }
    }

    /// Appends a cell.
    mutating func append(_ cell: PairCorrelation) { Self.append(cell, to: &bytes) }

    private static func append(_ cell: PairCorrelation, to bytes: inout [UInt8]) {
        let offset = bytes.count
        bytes += repeatElement(0, count: cellSize)
        bytes.withUnsafeMutableBytes { raw in store(cell, at: offset, in: raw) }
    }

    private static func store(_ cell: PairCorrelation, at offset: Int, in raw: UnsafeMutableRawBufferPointer) {
        raw.storeBytes(of: (cell.value ?? .nan).bitPattern.littleEndian, toByteOffset: offset, as: UInt64.self)
        raw.storeBytes(of: Int32(clamping: cell.observations).littleEndian, toByteOffset: offset + 8, as: Int32.self)
        raw.storeBytes(of: (cell.asOfDay ?? noDay).littleEndian, toByteOffset: offset + 12, as: Int32.self)
    }
}
