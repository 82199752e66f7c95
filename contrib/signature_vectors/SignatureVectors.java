// Checks the shared signature test vectors with the same JDK calls the Java IoT sender uses.
//
// Run (Java 17+, single-file source launch, no dependencies):
//   java contrib/signature_vectors/SignatureVectors.java contrib/signature_vectors/vectors.json
//
// Prints "OK <name>" or "FAIL <name> expected=<sig> got=<sig>" per vector.
// Exit status: 0 all vectors match, 1 at least one mismatch, 2 unreadable or malformed file.

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Base64;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import javax.crypto.Mac;
import javax.crypto.spec.SecretKeySpec;

public class SignatureVectors {

    /** Exactly what the sender does: Base64(HMAC-SHA256(secret UTF-8, (payload + timestamp) UTF-8)). */
    static String sign(String secret, String payload, long timestamp) throws Exception {
        Mac mac = Mac.getInstance("HmacSHA256");
        mac.init(new SecretKeySpec(secret.getBytes(StandardCharsets.UTF_8), "HmacSHA256"));
        byte[] raw = mac.doFinal((payload + timestamp).getBytes(StandardCharsets.UTF_8));
        return Base64.getEncoder().encodeToString(raw);
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 1) {
            System.err.println("usage: java SignatureVectors.java vectors.json");
            System.exit(2);
        }
        List<Object> vectors;
        try {
            // The file is UTF-8 (raw non-ASCII text is allowed in it).
            String text = Files.readString(Path.of(args[0]), StandardCharsets.UTF_8);
            Object parsed = new JsonParser(text).parseDocument();
            if (!(parsed instanceof List)) {
                throw new IllegalArgumentException("top level must be an array of vectors");
            }
            @SuppressWarnings("unchecked")
            List<Object> list = (List<Object>) parsed;
            vectors = list;
            if (vectors.isEmpty()) {
                throw new IllegalArgumentException("no vectors in file");
            }
        } catch (Exception e) {
            System.err.println("ERROR reading " + args[0] + ": " + e.getMessage());
            System.exit(2);
            return;
        }

        int failures = 0;
        for (int i = 0; i < vectors.size(); i++) {
            String name;
            String secret;
            String payload;
            long timestamp;
            String expected;
            try {
                if (!(vectors.get(i) instanceof Map)) {
                    throw new IllegalArgumentException("vector is not an object");
                }
                @SuppressWarnings("unchecked")
                Map<String, Object> v = (Map<String, Object>) vectors.get(i);
                name = string(v, "name");
                secret = string(v, "secret");
                payload = string(v, "payload");
                expected = string(v, "signature");
                Object ts = v.get("timestamp");
                if (!(ts instanceof Long)) {
                    throw new IllegalArgumentException("\"timestamp\" must be an integer");
                }
                timestamp = (Long) ts;
            } catch (IllegalArgumentException e) {
                System.err.println("ERROR vector #" + i + ": " + e.getMessage());
                System.exit(2);
                return;
            }
            String got = sign(secret, payload, timestamp);
            if (got.equals(expected)) {
                System.out.println("OK " + name);
            } else {
                failures++;
                System.out.println("FAIL " + name + " expected=" + expected + " got=" + got);
            }
        }
        System.out.println((vectors.size() - failures) + "/" + vectors.size() + " vectors match");
        System.exit(failures == 0 ? 0 : 1);
    }

    private static String string(Map<String, Object> v, String key) {
        Object value = v.get(key);
        if (!(value instanceof String)) {
            throw new IllegalArgumentException("\"" + key + "\" missing or not a string");
        }
        return (String) value;
    }

    /**
     * Minimal strict JSON parser (RFC 8259): objects, arrays, strings with all escapes
     * (including surrogate pairs via \\uXXXX), integers (as Long), other numbers (as Double),
     * true, false, null. Enough for vectors.json; no external library needed.
     */
    static final class JsonParser {
        private final String s;
        private int pos;

        JsonParser(String s) {
            // Tolerate a UTF-8 byte order mark.
            this.s = s.startsWith("\uFEFF") ? s.substring(1) : s;
        }

        Object parseDocument() {
            Object value = parseValue();
            skipWhitespace();
            if (pos != s.length()) {
                throw error("trailing characters");
            }
            return value;
        }

        private Object parseValue() {
            skipWhitespace();
            if (pos >= s.length()) {
                throw error("unexpected end of input");
            }
            char c = s.charAt(pos);
            switch (c) {
                case '{':
                    return parseObject();
                case '[':
                    return parseArray();
                case '"':
                    return parseString();
                case 't':
                    expectWord("true");
                    return Boolean.TRUE;
                case 'f':
                    expectWord("false");
                    return Boolean.FALSE;
                case 'n':
                    expectWord("null");
                    return null;
                default:
                    if (c == '-' || (c >= '0' && c <= '9')) {
                        return parseNumber();
                    }
                    throw error("unexpected character '" + c + "'");
            }
        }

        private Map<String, Object> parseObject() {
            Map<String, Object> map = new LinkedHashMap<>();
            pos++; // '{'
            skipWhitespace();
            if (peek() == '}') {
                pos++;
                return map;
            }
            while (true) {
                skipWhitespace();
                if (peek() != '"') {
                    throw error("expected a string key");
                }
                String key = parseString();
                skipWhitespace();
                expect(':');
                Object value = parseValue();
                if (map.containsKey(key)) {
                    throw error("duplicate key \"" + key + "\"");
                }
                map.put(key, value);
                skipWhitespace();
                char c = next();
                if (c == '}') {
                    return map;
                }
                if (c != ',') {
                    throw error("expected ',' or '}'");
                }
            }
        }

        private List<Object> parseArray() {
            List<Object> list = new ArrayList<>();
            pos++; // '['
            skipWhitespace();
            if (peek() == ']') {
                pos++;
                return list;
            }
            while (true) {
                list.add(parseValue());
                skipWhitespace();
                char c = next();
                if (c == ']') {
                    return list;
                }
                if (c != ',') {
                    throw error("expected ',' or ']'");
                }
            }
        }

        private String parseString() {
            pos++; // opening quote
            StringBuilder sb = new StringBuilder();
            while (true) {
                char c = next();
                if (c == '"') {
                    return sb.toString();
                }
                if (c < 0x20) {
                    throw error("raw control character in string");
                }
                if (c != '\\') {
                    sb.append(c);
                    continue;
                }
                char e = next();
                switch (e) {
                    case '"': sb.append('"'); break;
                    case '\\': sb.append('\\'); break;
                    case '/': sb.append('/'); break;
                    case 'b': sb.append('\b'); break;
                    case 'f': sb.append('\f'); break;
                    case 'n': sb.append('\n'); break;
                    case 'r': sb.append('\r'); break;
                    case 't': sb.append('\t'); break;
                    case 'u':
                        if (pos + 4 > s.length()) {
                            throw error("truncated \\u escape");
                        }
                        try {
                            // UTF-16 code unit; a surrogate pair arrives as two escapes.
                            sb.append((char) Integer.parseInt(s.substring(pos, pos + 4), 16));
                        } catch (NumberFormatException ex) {
                            throw error("bad \\u escape");
                        }
                        pos += 4;
                        break;
                    default:
                        throw error("bad escape \\" + e);
                }
            }
        }

        private Object parseNumber() {
            int start = pos;
            if (peek() == '-') {
                pos++;
            }
            boolean integer = true;
            while (pos < s.length()) {
                char c = s.charAt(pos);
                if (c >= '0' && c <= '9') {
                    pos++;
                } else if (c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-') {
                    integer = false;
                    pos++;
                } else {
                    break;
                }
            }
            String text = s.substring(start, pos);
            try {
                return integer ? (Object) Long.parseLong(text) : (Object) Double.parseDouble(text);
            } catch (NumberFormatException ex) {
                throw error("bad number " + text);
            }
        }

        private void expectWord(String word) {
            if (!s.startsWith(word, pos)) {
                throw error("expected " + word);
            }
            pos += word.length();
        }

        private void expect(char c) {
            if (next() != c) {
                throw error("expected '" + c + "'");
            }
        }

        private char peek() {
            if (pos >= s.length()) {
                throw error("unexpected end of input");
            }
            return s.charAt(pos);
        }

        private char next() {
            char c = peek();
            pos++;
            return c;
        }

        private void skipWhitespace() {
            while (pos < s.length()) {
                char c = s.charAt(pos);
                if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
                    pos++;
                } else {
                    break;
                }
            }
        }

        private IllegalArgumentException error(String message) {
            return new IllegalArgumentException(message + " at offset " + pos);
        }
    }
}
