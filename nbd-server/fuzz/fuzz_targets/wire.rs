//! Fuzzes the option and request decoders.
#![no_main]

use ballast_nbd::wire::*;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_info_request(data);
    let _ = parse_meta_context_request(data);
    let _ = parse_string(data);
    if let Ok(header) = <[u8; OPTION_HEADER_LEN]>::try_from(data.get(..OPTION_HEADER_LEN).unwrap_or_default()) {
        let _ = decode_option_header(&header);
    }
    if let Ok(header) = <[u8; REQUEST_HEADER_LEN]>::try_from(data.get(..REQUEST_HEADER_LEN).unwrap_or_default()) {
        let _ = decode_request_header(&header);
    }
    if let Ok(header) = <[u8; EXTENDED_REQUEST_HEADER_LEN]>::try_from(
        data.get(..EXTENDED_REQUEST_HEADER_LEN).unwrap_or_default(),
    ) {
        let _ = decode_extended_request_header(&header);
    }
});
