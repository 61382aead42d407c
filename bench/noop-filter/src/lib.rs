//! The benchmark's baselines: a wasm HTTP filter whose callbacks return at once, so a request
//! pays only for crossing into the VM (headers and body callbacks) and nothing else.
//!
//! With the plugin configuration `buffer` it also holds the request until the whole body has
//! arrived (as any body-based router must) and then lets it go unchanged: the floor for a
//! filter that reads the body, i.e. VM crossings plus Envoy's own buffering.
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { buffer: false }) });
}}

struct Root {
    buffer: bool,
}
impl Context for Root {}
impl RootContext for Root {
    fn on_configure(&mut self, size: usize) -> bool {
        if size > 0 {
            let config =
                proxy_wasm::hostcalls::get_buffer(BufferType::PluginConfiguration, 0, size);
            self.buffer = matches!(config, Ok(Some(c)) if c.trim_ascii() == b"buffer");
        }
        true
    }
    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Noop {
            buffer: self.buffer,
        }))
    }
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Noop {
    buffer: bool,
}
impl Context for Noop {}
impl HttpContext for Noop {
    fn on_http_request_headers(&mut self, _: usize, end_of_stream: bool) -> Action {
        if self.buffer && !end_of_stream {
            Action::Pause
        } else {
            Action::Continue
        }
    }
    fn on_http_request_body(&mut self, _: usize, end_of_stream: bool) -> Action {
        if self.buffer && !end_of_stream {
            Action::Pause
        } else {
            Action::Continue
        }
    }
}
