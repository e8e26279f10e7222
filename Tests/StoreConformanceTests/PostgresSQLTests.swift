import ServiceRuntime
import Testing

@Suite("PostgreSQL statements put together")
struct PostgresSQLTests {
    @Test("parameters are renumbered from the given one; a $ not before digits, and the text around, are kept")
    func renumbered() {
        #expect(PostgresSQL.renumbered("SELECT $1, $2", from: 1) == "SELECT $1, $2")
        #expect(PostgresSQL.renumbered("SELECT $1, $2::text[], $10 FROM t WHERE a = $2", from: 4)
            == "SELECT $4, $5::text[], $13 FROM t WHERE a = $5")
        #expect(PostgresSQL.renumbered("x = '$' AND y = $1$", from: 3) == "x = '$' AND y = $3$")
        #expect(PostgresSQL.renumbered("", from: 9) == "")
        #expect(PostgresSQL.renumbered("$1", from: 100) == "$100")
    }
}
