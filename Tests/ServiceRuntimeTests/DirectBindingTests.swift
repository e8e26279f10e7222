import Foundation
import GRDB
@testable import ServiceRuntime
import Testing

@Suite("Direct binding")
struct DirectBindingTests {
    @Test("values round-trip as GRDB binds them: empty text and blobs stay non-NULL, nil is NULL, errors are DatabaseErrors")
    func roundTrip() throws {
        let queue = try DatabaseQueue()
        try queue.write { db in
            try db.execute(sql: """
                CREATE TABLE t (k TEXT PRIMARY KEY, s TEXT, d REAL, i INTEGER, b BLOB NOT NULL, n TEXT)
                """)
            let insert = try db.cachedStatement(sql: "INSERT INTO t (k, s, d, i, b, n) VALUES (?, ?, ?, ?, ?, ?)")
            let rows: [(String, String?, Double?, Int, Data)] = [
                ("a", "", 1.5, -7, Data()),
                ("b", "z\u{00FC}rich \u{1F4C8}", nil, Int(Int32.max) + 1, Data([0, 1, 2, 255])),
                ("c", nil, -0.25, 0, Data(repeating: 9, count: 100_000)),
            ]
            for (k, s, d, i, b) in rows {
                try DirectBinding.execute(insert, in: db) { row in
                    row.bind(1, k)
                    row.bind(2, s)
                    row.bind(3, d)
                    row.bind(4, i)
                    row.bind(5, b)
                    row.bindNull(6)
                }
            }
            // The same statement again: a duplicate key is SQLite's constraint error, thrown.
            let error = #expect(throws: DatabaseError.self) {
                try DirectBinding.execute(insert, in: db) { row in
                    row.bind(1, "a"); row.bind(2, "x"); row.bind(3, 0.0); row.bind(4, 0); row.bind(5, Data()); row.bindNull(6)
                }
            }
            #expect(error?.resultCode == .SQLITE_CONSTRAINT)
            // And usable afterwards; GRDB's own execution of it too.
            try DirectBinding.execute(insert, in: db) { row in
                row.bind(1, "d"); row.bind(2, "after"); row.bind(3, 2.0); row.bind(4, 4); row.bind(5, Data([7])); row.bindNull(6)
            }
            try insert.execute(arguments: ["e", "grdb", 3.0, 5, Data([8]), nil])

            let stored = try Row.fetchAll(db, sql: "SELECT k, s, d, i, b, n, typeof(s), typeof(b) FROM t ORDER BY k")
            #expect(stored.count == 5)
            for (index, (k, s, d, i, b)) in rows.enumerated() {
                let row = stored[index]
                #expect(row[0] as String == k)
                #expect(row[1] as String? == s)
                #expect(row[2] as Double? == d)
                #expect(row[3] as Int == i)
                #expect(row[4] as Data == b)
                #expect(row[5] as String? == nil)
                #expect(row[6] as String == (s == nil ? "null" : "text"))
                #expect(row[7] as String == "blob")
            }
            #expect(stored[3][1] as String == "after" && stored[4][1] as String == "grdb")
        }
    }
}
