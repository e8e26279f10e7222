import COpenBLAS
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
        let n = rows.count
        guard n > 0 else { return [] }
        let k = rows[0].count
        let stride = k
        let z = UnsafeMutableBufferPointer<Double>.allocate(capacity: n * stride)
        z.initialize(repeating: 0)
        defer { z.deallocate() }
        var valid = [Bool](repeating: false, count: n)
        for (i, row) in rows.enumerated() {
            precondition(row.count == k, "every row needs the same number of dates")
            var mean = 0.0
            for v in row { mean += v }
            mean /= Double(k)
            var ss = 0.0
            for v in row { ss += (v - mean) * (v - mean) }
            guard ss > 0 else { continue }
            valid[i] = true
            let scale = 1 / ss.squareRoot()
            for t in 0..<k { z[i * stride + t] = (row[t] - mean) * scale }
        }
        let out = [Double](unsafeUninitializedCapacity: n * n) { buffer, count in
            let m = buffer.baseAddress!
            // The Gram matrix Z·Zᵀ of the unit rows: OpenBLAS's dsyrk fills the upper triangle.
            openblas_set_num_threads(Int32(n * k < 400_000 ? 2 : 2))  // EXPERIMENT
            cblas_dsyrk(CblasRowMajor, CblasUpper, CblasNoTrans, Int32(n), Int32(k), 1.0,
                        z.baseAddress, Int32(stride), 0.0, m, Int32(n))
            // Clip, set the diagonal, and mirror into the lower triangle block by block (the
            // mirror reads columns; blocks keep both sides in cache).
            let block = 64
            for bi in Swift.stride(from: 0, to: n, by: block) {
                for bj in Swift.stride(from: bi, to: n, by: block) {
                    for i in bi..<min(bi + block, n) {
                        for j in max(i, bj)..<min(bj + block, n) {
                            let v: Double
                            if !valid[i] || !valid[j] {
                                v = .nan
                            } else if i == j {
                                v = 1
                            } else {
                                v = Swift.max(-1, Swift.min(1, m[i * n + j]))
                            }
                            m[i * n + j] = v
                            m[j * n + i] = v
                        }
                    }
                }
            }
            count = n * n
        }
        return out
    }
}
