import COpenBLAS
import Dispatch
import Foundation

/// The dense correlation matrix of series that share the same dates (every row one
/// symbol, every column one date), as numpy's `corrcoef` computes it.
public enum CorrelationMatrix {
    /// Pearson's r of every pair of `rows` (all of one length), row-major `n × n`; `nan`
    /// where a row has zero variance (numpy gives `nan` there too; the API gives `null`).
    ///
    /// Rows are centred and scaled to unit norm once; the matrix is then their Gram matrix,
    /// one `cblas_dsyrk` (half the work of the matrix product numpy's `corrcoef` does).
    public static func compute(_ rows: [[Double]]) -> [Double] {
        // OpenBLAS's own threads cost more than they bring at these sizes; the two halves
        // in `gram` run on two threads of ours, each call single-threaded. (Run the process
        // with OPENBLAS_NUM_THREADS=1 too: an idle OpenBLAS pool spins on a core.)
        openblas_set_num_threads(1)
        let n = rows.count
        guard n > 0 else { return [] }
        let k = rows[0].count
        let z = UnsafeMutablePointer<Double>.allocate(capacity: n * k)
        defer { z.deallocate() }
        var valid = [Bool](repeating: true, count: n)
        var allValid = true
        for (i, row) in rows.enumerated() {
            precondition(row.count == k, "every row needs the same number of dates")
            row.withUnsafeBufferPointer { r in
                let zi = z + i * k
                let mean = sum(r.baseAddress!, k) / Double(k)
                for t in 0..<k { zi[t] = r[t] - mean }
                let ss = dot(zi, zi, k)
                if ss > 0 {
                    let scale = 1 / ss.squareRoot()
                    for t in 0..<k { zi[t] *= scale }
                } else {
                    valid[i] = false
                    allValid = false
                    zi.update(repeating: 0, count: k)
                }
            }
        }
        let out = [Double](unsafeUninitializedCapacity: n * n) { buffer, count in
            let m = buffer.baseAddress!
            // The Gram matrix Z·Zᵀ of the unit rows, upper triangle.
            gram(z, n: n, k: k, into: m)
            // Clip, set the diagonal, and mirror into the lower triangle block by block (the
            // mirror reads columns; blocks keep both sides in cache).
            // Block rows alternate between two threads (each block writes only its own cells).
            let block = 64
            let mBits = UInt(bitPattern: m)
            @Sendable func mirror(_ part: Int) {
                let m = UnsafeMutablePointer<Double>(bitPattern: mBits)!
                for bi in Swift.stride(from: part * block, to: n, by: 2 * block) {
                    for bj in Swift.stride(from: bi, to: n, by: block) {
                        for i in bi..<min(bi + block, n) {
                            let row = m + i * n
                            for j in max(i + 1, bj)..<max(max(i + 1, bj), min(bj + block, n)) {
                                let v = Swift.max(-1, Swift.min(1, row[j]))
                                row[j] = v
                                m[j * n + i] = v
                            }
                        }
                    }
                }
            }
            if n >= 4 * block {
                let group = DispatchGroup()
                DispatchQueue.global(qos: .userInitiated).async(group: group) { mirror(1) }
                mirror(0)
                group.wait()
            } else {
                mirror(0)
                mirror(1)
            }
            for i in 0..<n { m[i * n + i] = 1 }
            if !allValid {
                for i in 0..<n where !valid[i] {
                    for j in 0..<n {
                        m[i * n + j] = .nan
                        m[j * n + i] = .nan
                    }
                }
            }
            count = n * n
        }
        return out
    }

    /// The upper triangle of Z·Zᵀ (Z: `n × k`, row-major) into `m` (`n × n`), in two halves of
    /// equal work run in parallel: rows A = [0, h) and B = [h, n), h = n/2; one thread does
    /// A·Aᵀ and A·B₁ᵀ, the other B·Bᵀ and A·B₂ᵀ (B = B₁ ∪ B₂). Calls `cblas_dsyrk`, `cblas_dgemm`.
    static func gram(_ z: UnsafeMutablePointer<Double>, n: Int, k: Int, into m: UnsafeMutablePointer<Double>) {
        guard n >= 64 else { return blocks(UInt(bitPattern: z), n: n, k: k, UInt(bitPattern: m), part: nil) }
        // Each half writes its own blocks of `m`; the addresses cross as integers.
        let zBits = UInt(bitPattern: z), mBits = UInt(bitPattern: m)
        let group = DispatchGroup()
        DispatchQueue.global(qos: .userInitiated).async(group: group) { blocks(zBits, n: n, k: k, mBits, part: 1) }
        blocks(zBits, n: n, k: k, mBits, part: 0)
        group.wait()
    }

    private static func blocks(_ zBits: UInt, n: Int, k: Int, _ mBits: UInt, part: Int?) {
        let z = UnsafeMutablePointer<Double>(bitPattern: zBits)!, m = UnsafeMutablePointer<Double>(bitPattern: mBits)!
        let ld = Int32(k), ldm = Int32(n)
        func syrk(_ first: Int, _ count: Int) {
            guard count > 0 else { return }
            cblas_dsyrk(CblasRowMajor, CblasUpper, CblasNoTrans, Int32(count), ld, 1.0,
                        z + first * k, ld, 0.0, m + first * n + first, ldm)
        }
        func gemm(rows: Range<Int>, cols: Range<Int>) {
            guard !rows.isEmpty, !cols.isEmpty else { return }
            cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(rows.count), Int32(cols.count), ld, 1.0,
                        z + rows.lowerBound * k, ld, z + cols.lowerBound * k, ld, 0.0,
                        m + rows.lowerBound * n + cols.lowerBound, ldm)
        }
        guard let part else { return syrk(0, n) }
        let h = n / 2, q = h + (n - h) / 2
        if part == 0 {
            syrk(0, h)
            gemm(rows: 0..<h, cols: h..<q)
        } else {
            syrk(h, n - h)
            gemm(rows: 0..<h, cols: q..<n)
        }
    }

    /// Σ x, with four SIMD accumulators (the plain loop cannot be vectorised: FP order).
    @inline(__always)
    static func sum(_ x: UnsafePointer<Double>, _ count: Int) -> Double {
        var acc = SIMD4<Double>()
        var t = 0
        while t + 4 <= count {
            acc += UnsafeRawPointer(x + t).loadUnaligned(as: SIMD4<Double>.self)
            t += 4
        }
        var total = acc.sum()
        while t < count { total += x[t]; t += 1 }
        return total
    }

    /// Σ x·y, likewise.
    @inline(__always)
    static func dot(_ x: UnsafePointer<Double>, _ y: UnsafePointer<Double>, _ count: Int) -> Double {
        var acc = SIMD4<Double>()
        var t = 0
        while t + 4 <= count {
            acc += UnsafeRawPointer(x + t).loadUnaligned(as: SIMD4<Double>.self)
                * UnsafeRawPointer(y + t).loadUnaligned(as: SIMD4<Double>.self)
            t += 4
        }
        var total = acc.sum()
        while t < count { total += x[t] * y[t]; t += 1 }
        return total
    }
}
