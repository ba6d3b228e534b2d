//! A minimal HTTP/1.1 client for one keep-alive connection, enough for ctrip's responses:
//! bodies framed by Content-Length, chunked encoding, or the end of the connection.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Maximum length of a status line or header line, in bytes.
const MAX_LINE: usize = 8 * 1024;

/// A response: status code and body. `close` is set when the connection cannot be reused.
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    pub close: bool,
}

/// One TCP connection that requests are sent over in turn.
pub struct Connection {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Connection {
    /// Connects to `addr`. `timeout` bounds the connect and every later read and write.
    pub fn open(addr: SocketAddr, timeout: Duration) -> io::Result<Connection> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let writer = stream.try_clone()?;
        Ok(Connection {
            reader: BufReader::with_capacity(16 * 1024, stream),
            writer,
        })
    }

    /// Sends the complete request bytes `request` and reads the response.
    pub fn exchange(&mut self, request: &[u8]) -> io::Result<Response> {
        self.writer.write_all(request)?;
        self.read_response()
    }

    fn read_response(&mut self) -> io::Result<Response> {
        let status_line = self.read_line()?;
        if status_line.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection before responding",
            ));
        }
        let status = parse_status(&status_line)?;
        let mut content_length = None;
        let mut chunked = false;
        let mut close = status_line.starts_with("HTTP/1.0");
        loop {
            let line = self.read_line()?;
            if line.is_empty() {
                break;
            }
            let Some((name, value)) = line.split_once(':') else {
                return Err(invalid(format!("malformed header line {line:?}")));
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                let length = value
                    .parse::<usize>()
                    .map_err(|_| invalid(format!("invalid Content-Length {value:?}")))?;
                content_length = Some(length);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.to_ascii_lowercase().contains("chunked");
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.eq_ignore_ascii_case("close");
            }
        }
        let body = if chunked {
            self.read_chunked()?
        } else if let Some(length) = content_length {
            let mut body = vec![0; length];
            self.reader.read_exact(&mut body)?;
            body
        } else {
            close = true;
            let mut body = Vec::new();
            self.reader.read_to_end(&mut body)?;
            body
        };
        Ok(Response {
            status,
            body,
            close,
        })
    }

    fn read_chunked(&mut self) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line()?;
            let size_text = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16)
                .map_err(|_| invalid(format!("invalid chunk size {line:?}")))?;
            if size == 0 {
                // Trailer fields, if any, end with an empty line.
                while !self.read_line()?.is_empty() {}
                return Ok(body);
            }
            let start = body.len();
            body.resize(start + size, 0);
            self.reader.read_exact(&mut body[start..])?;
            if !self.read_line()?.is_empty() {
                return Err(invalid("a chunk does not end with CRLF".to_owned()));
            }
        }
    }

    /// Reads one line without its CRLF, or an empty string at the end of the stream.
    fn read_line(&mut self) -> io::Result<String> {
        let mut line = Vec::new();
        let read = (&mut self.reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)?;
        if read == MAX_LINE && !line.ends_with(b"\n") {
            return Err(invalid(format!("a line is longer than {MAX_LINE} bytes")));
        }
        while line
            .last()
            .is_some_and(|byte| *byte == b'\n' || *byte == b'\r')
        {
            line.pop();
        }
        String::from_utf8(line).map_err(|_| invalid("a header line is not UTF-8".to_owned()))
    }
}

fn parse_status(line: &str) -> io::Result<u16> {
    let mut parts = line.split(' ');
    let version = parts.next().unwrap_or("");
    let code = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(invalid(format!("not an HTTP/1.x status line: {line:?}")));
    }
    code.parse()
        .map_err(|_| invalid(format!("invalid status code in {line:?}")))
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Builds the bytes of one request. `authorization` is the whole header value.
pub fn request_bytes(
    host: SocketAddr,
    method: &str,
    path: &str,
    authorization: Option<&str>,
    json_body: Option<&str>,
) -> Vec<u8> {
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    if let Some(value) = authorization {
        text.push_str(&format!("Authorization: {value}\r\n"));
    }
    match json_body {
        Some(body) => {
            text.push_str("Content-Type: application/json\r\n");
            text.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        }
        None => text.push_str("\r\n"),
    }
    text.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line_parsed() {
        assert_eq!(parse_status("HTTP/1.1 201 Created").unwrap(), 201);
        assert_eq!(parse_status("HTTP/1.0 503").unwrap(), 503);
        assert!(parse_status("SSH-2.0-OpenSSH").is_err());
    }

    #[test]
    fn request_has_length_and_body() {
        let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let bytes = request_bytes(addr, "POST", "/p", Some("Bearer k"), Some("{}"));
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("POST /p HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"));
        assert!(text.contains("Authorization: Bearer k\r\n"));
        assert!(text.ends_with("Content-Length: 2\r\n\r\n{}"));
    }
}
