//! A safe reader for the subset of Python's pickle that a PyTorch state dict uses.
//!
//! Nothing is ever executed: the reader is an interpreter of a fixed opcode list whose only
//! "calls" are three known constructors, recognised by name and evaluated here as data:
//! `collections.OrderedDict()` (an empty dict), `torch._utils._rebuild_tensor_v2(storage,
//! offset, size, stride, ...)` and `torch._utils._rebuild_parameter(tensor, ...)` (a tensor
//! reference). Globals are restricted to those and to the storage types (`torch.FloatStorage`,
//! ...); any other global, any other opcode, and `BUILD` on anything but a dict are errors that
//! name the opcode or the class and the byte offset. Tensor data stays in the zip archive:
//! a tensor here is a reference (storage key, dtype, offset, shape, strides), checked and read
//! by [`super::StateDict`].
//!
//! Opcodes: `PROTO FRAME STOP MARK POP POP_MARK DUP EMPTY_DICT EMPTY_LIST EMPTY_TUPLE DICT
//! LIST TUPLE TUPLE1 TUPLE2 TUPLE3 APPEND APPENDS SETITEM SETITEMS BINUNICODE
//! SHORT_BINUNICODE BINUNICODE8 BININT BININT1 BININT2 LONG1 BINFLOAT NONE NEWTRUE NEWFALSE
//! BINPUT LONG_BINPUT BINGET LONG_BINGET MEMOIZE GLOBAL STACK_GLOBAL REDUCE BINPERSID BUILD`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// Element types of PyTorch storages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageDtype {
    F32,
    F16,
    Bf16,
    F64,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl StorageDtype {
    fn from_class(name: &str) -> Option<StorageDtype> {
        Some(match name {
            "FloatStorage" => StorageDtype::F32,
            "HalfStorage" => StorageDtype::F16,
            "BFloat16Storage" => StorageDtype::Bf16,
            "DoubleStorage" => StorageDtype::F64,
            "LongStorage" => StorageDtype::I64,
            "IntStorage" => StorageDtype::I32,
            "ShortStorage" => StorageDtype::I16,
            "CharStorage" => StorageDtype::I8,
            "ByteStorage" => StorageDtype::U8,
            "BoolStorage" => StorageDtype::Bool,
            _ => return None,
        })
    }
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            StorageDtype::F64 | StorageDtype::I64 => 8,
            StorageDtype::F32 | StorageDtype::I32 => 4,
            StorageDtype::F16 | StorageDtype::Bf16 | StorageDtype::I16 => 2,
            StorageDtype::I8 | StorageDtype::U8 | StorageDtype::Bool => 1,
        }
    }
    /// PyTorch's name (`float32`, ...).
    pub fn name(self) -> &'static str {
        match self {
            StorageDtype::F32 => "float32",
            StorageDtype::F16 => "float16",
            StorageDtype::Bf16 => "bfloat16",
            StorageDtype::F64 => "float64",
            StorageDtype::I64 => "int64",
            StorageDtype::I32 => "int32",
            StorageDtype::I16 => "int16",
            StorageDtype::I8 => "int8",
            StorageDtype::U8 => "uint8",
            StorageDtype::Bool => "bool",
        }
    }
}

/// A tensor as the pickle describes it: a view into a storage of the archive.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorRef {
    /// The storage's key: its data is the archive entry `<prefix>/data/<key>`.
    pub storage: String,
    pub dtype: StorageDtype,
    /// Elements the storage claims to hold.
    pub storage_len: u64,
    /// Offset of the first element, in elements.
    pub offset: u64,
    pub shape: Vec<usize>,
    /// Strides in elements.
    pub strides: Vec<usize>,
}

/// The callables the reader knows by name.
#[derive(Clone, Debug, PartialEq)]
pub enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildParameter,
    Storage(StorageDtype),
}

/// A shared, mutable dict (pickle's memo can refer to it while it is being filled).
pub type DictRef = Rc<RefCell<Vec<(Value, Value)>>>;
type ListRef = Rc<RefCell<Vec<Value>>>;

/// A value of the allowed subset.
#[derive(Clone, Debug)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Tuple(Rc<Vec<Value>>),
    List(ListRef),
    Dict(DictRef),
    Global(Global),
    Storage {
        dtype: StorageDtype,
        key: String,
        len: u64,
    },
    Tensor(Rc<TensorRef>),
}

impl Value {
    /// A short description for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "a bool",
            Value::Int(_) => "an int",
            Value::Float(_) => "a float",
            Value::Str(_) => "a string",
            Value::Tuple(_) => "a tuple",
            Value::List(_) => "a list",
            Value::Dict(_) => "a dict",
            Value::Global(_) => "a class",
            Value::Storage { .. } => "a storage",
            Value::Tensor(_) => "a tensor",
        }
    }
}

/// What went wrong, with the byte offset of the opcode.
pub struct PickleError {
    pub offset: usize,
    pub message: String,
}

type R<T> = std::result::Result<T, PickleError>;

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    /// Offset of the opcode being run.
    op_at: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
}

impl<'a> Machine<'a> {
    fn fail<T>(&self, message: impl Into<String>) -> R<T> {
        Err(PickleError {
            offset: self.op_at,
            message: message.into(),
        })
    }
    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        match self
            .pos
            .checked_add(n)
            .and_then(|e| self.data.get(self.pos..e))
        {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => self.fail(format!(
                "the pickle ends inside an opcode's argument ({n} bytes wanted, {} left)",
                self.data.len().saturating_sub(self.pos)
            )),
        }
    }
    fn u8(&mut self) -> R<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> R<u16> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self) -> R<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> R<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn string(&mut self, n: usize) -> R<String> {
        let b = self.take(n)?;
        match std::str::from_utf8(b) {
            Ok(s) => Ok(s.to_string()),
            Err(_) => self.fail("a string is not valid UTF-8"),
        }
    }
    fn line(&mut self) -> R<String> {
        let rest = &self.data[self.pos..];
        let Some(n) = rest.iter().position(|&b| b == b'\n') else {
            return self.fail("GLOBAL's argument has no end of line");
        };
        let s = self.string(n)?;
        self.pos += 1;
        Ok(s)
    }
    fn pop(&mut self) -> R<Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return self.fail("stack underflow (a malformed pickle)");
        }
        Ok(self.stack.pop().expect("checked"))
    }
    fn top(&mut self) -> R<&mut Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return self.fail("stack underflow (a malformed pickle)");
        }
        Ok(self.stack.last_mut().expect("checked"))
    }
    /// The items above the last mark, removing them and the mark.
    fn pop_mark(&mut self) -> R<Vec<Value>> {
        let Some(m) = self.marks.pop() else {
            return self.fail("no MARK to pop to (a malformed pickle)");
        };
        Ok(self.stack.split_off(m))
    }
    fn memo_put(&mut self, key: u32) -> R<()> {
        let v = self.top()?.clone();
        self.memo.insert(key, v);
        Ok(())
    }
    fn memo_get(&mut self, key: u32) -> R<()> {
        match self.memo.get(&key) {
            Some(v) => {
                let v = v.clone();
                self.stack.push(v);
                Ok(())
            }
            None => self.fail(format!("memo entry {key} is read before it is written")),
        }
    }
    fn global(&self, module: &str, name: &str) -> R<Global> {
        Ok(match (module, name) {
            ("collections", "OrderedDict") => Global::OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensor,
            ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
            ("torch", cls) if StorageDtype::from_class(cls).is_some() => {
                Global::Storage(StorageDtype::from_class(cls).expect("checked"))
            }
            _ => {
                return self.fail(format!(
                    "refusing to load the class `{module}.{name}`: only state dicts (tensors, \
                     dicts, lists, numbers, strings) are read, never arbitrary objects or code; \
                     save the weights alone with torch.save(model.state_dict(), path)"
                ))
            }
        })
    }
    fn set_items(&mut self, dict: &Value, items: Vec<Value>) -> R<()> {
        let Value::Dict(d) = dict else {
            return self.fail(format!("SETITEM(S) on {}, expected a dict", dict.kind()));
        };
        if !items.len().is_multiple_of(2) {
            return self.fail("SETITEMS with an odd number of items");
        }
        let mut d = d.borrow_mut();
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            d.push((k, v));
        }
        Ok(())
    }
    fn int_arg(&self, v: &Value, what: &str) -> R<u64> {
        match v {
            Value::Int(i) if *i >= 0 => Ok(*i as u64),
            other => self.fail(format!(
                "{what} is {}, expected a non-negative int",
                other.kind()
            )),
        }
    }
    fn dims(&self, v: &Value, what: &str) -> R<Vec<usize>> {
        let Value::Tuple(t) = v else {
            return self.fail(format!("{what} is {}, expected a tuple", v.kind()));
        };
        t.iter()
            .map(|d| {
                let d = self.int_arg(d, what)?;
                usize::try_from(d).or_else(|_| self.fail(format!("{what} holds {d}, too large")))
            })
            .collect()
    }
    fn reduce(&mut self, callable: Value, args: Value) -> R<Value> {
        let Value::Tuple(args) = args else {
            return self.fail(format!(
                "REDUCE arguments are {}, expected a tuple",
                args.kind()
            ));
        };
        match callable {
            Value::Global(Global::OrderedDict) if args.is_empty() => {
                Ok(Value::Dict(Rc::new(RefCell::new(Vec::new()))))
            }
            Value::Global(Global::RebuildTensor) if (6..=7).contains(&args.len()) => {
                let Value::Storage { dtype, key, len } = &args[0] else {
                    return self.fail(format!(
                        "_rebuild_tensor_v2's storage is {}, expected a storage reference",
                        args[0].kind()
                    ));
                };
                let offset = self.int_arg(&args[1], "the tensor's storage offset")?;
                let shape = self.dims(&args[2], "the tensor's size")?;
                let strides = self.dims(&args[3], "the tensor's stride")?;
                if shape.len() != strides.len() {
                    return self.fail(format!(
                        "tensor size {shape:?} and stride {strides:?} differ in length"
                    ));
                }
                Ok(Value::Tensor(Rc::new(TensorRef {
                    storage: key.clone(),
                    dtype: *dtype,
                    storage_len: *len,
                    offset,
                    shape,
                    strides,
                })))
            }
            Value::Global(Global::RebuildParameter) if (2..=3).contains(&args.len()) => {
                match &args[0] {
                    t @ Value::Tensor(_) => Ok(t.clone()),
                    other => self.fail(format!(
                        "_rebuild_parameter of {}, expected a tensor",
                        other.kind()
                    )),
                }
            }
            Value::Global(g) => self.fail(format!(
                "REDUCE of {g:?} with {} argument(s) is not a form a state dict uses",
                args.len()
            )),
            other => self.fail(format!(
                "REDUCE calls {}, which is not callable",
                other.kind()
            )),
        }
    }
    fn persistent(&self, pid: Value) -> R<Value> {
        let fields: Option<(StorageDtype, String, u64)> = match &pid {
            Value::Tuple(t) if t.len() == 5 => match (&t[0], &t[1], &t[2], &t[4]) {
                (
                    Value::Str(tag),
                    Value::Global(Global::Storage(d)),
                    Value::Str(key),
                    Value::Int(n),
                ) if tag == "storage" && *n >= 0 => Some((*d, key.clone(), *n as u64)),
                _ => None,
            },
            _ => None,
        };
        match fields {
            Some((dtype, key, len)) => Ok(Value::Storage { dtype, key, len }),
            None => self.fail(
                "a persistent id that is not ('storage', <StorageType>, key, location, numel)",
            ),
        }
    }

    fn run(&mut self) -> R<Value> {
        loop {
            self.op_at = self.pos;
            let op = match self.data.get(self.pos) {
                Some(&op) => op,
                None => return self.fail("the pickle ends without STOP (truncated?)"),
            };
            self.pos += 1;
            match op {
                0x80 => {
                    let p = self.u8()?;
                    if p > 5 {
                        return self.fail(format!("pickle protocol {p} is not supported (<= 5)"));
                    }
                }
                0x95 => {
                    self.u64()?;
                }
                b'.' => {
                    if !self.marks.is_empty() || self.stack.len() != 1 {
                        return self.fail("STOP with a malformed stack");
                    }
                    return self.pop();
                }
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v);
                }
                b'}' => self.stack.push(Value::Dict(Rc::default())),
                b']' => self.stack.push(Value::List(Rc::default())),
                b')' => self.stack.push(Value::Tuple(Rc::default())),
                b'd' => {
                    let items = self.pop_mark()?;
                    let d = Value::Dict(Rc::default());
                    self.set_items(&d, items)?;
                    self.stack.push(d);
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(Rc::new(RefCell::new(items))));
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(Rc::new(items)));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.stack.push(Value::Tuple(Rc::new(items)));
                }
                b'a' | b'e' => {
                    let items = if op == b'a' {
                        vec![self.pop()?]
                    } else {
                        self.pop_mark()?
                    };
                    match self.top()? {
                        Value::List(l) => l.borrow_mut().extend(items),
                        other => {
                            let k = other.kind();
                            return self.fail(format!("APPEND(S) to {k}, expected a list"));
                        }
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let d = self.top()?.clone();
                    self.set_items(&d, vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let d = self.top()?.clone();
                    self.set_items(&d, items)?;
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let s = self.string(n)?;
                    self.stack.push(Value::Str(s));
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let s = self.string(n)?;
                    self.stack.push(Value::Str(s));
                }
                0x8d => {
                    let n = self.u64()?;
                    let n = usize::try_from(n).or_else(|_| self.fail("string too long"))?;
                    let s = self.string(n)?;
                    self.stack.push(Value::Str(s));
                }
                b'J' => {
                    let v = self.u32()? as i32;
                    self.stack.push(Value::Int(v as i64));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v as i64));
                }
                b'M' => {
                    let v = self.u16()?;
                    self.stack.push(Value::Int(v as i64));
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    if n > 8 {
                        return self.fail(format!("LONG1 of {n} bytes: integer too large"));
                    }
                    let mut v: i64 = 0;
                    for (i, &byte) in b.iter().enumerate() {
                        v |= (byte as i64) << (8 * i);
                    }
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    self.stack.push(Value::Int(v));
                }
                b'G' => {
                    let b = self.take(8)?;
                    let v = f64::from_be_bytes(b.try_into().expect("8 bytes"));
                    self.stack.push(Value::Float(v));
                }
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'q' => {
                    let k = self.u8()? as u32;
                    self.memo_put(k)?;
                }
                b'r' => {
                    let k = self.u32()?;
                    self.memo_put(k)?;
                }
                0x94 => {
                    let k = self.memo.len() as u32;
                    self.memo_put(k)?;
                }
                b'h' => {
                    let k = self.u8()? as u32;
                    self.memo_get(k)?;
                }
                b'j' => {
                    let k = self.u32()?;
                    self.memo_get(k)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = self.global(&module, &name)?;
                    self.stack.push(Value::Global(g));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(m), Value::Str(n)) = (&module, &name) else {
                        return self.fail("STACK_GLOBAL without two strings");
                    };
                    let g = self.global(m, n)?;
                    self.stack.push(Value::Global(g));
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.reduce(callable, args)?;
                    self.stack.push(v);
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent(pid)?;
                    self.stack.push(v);
                }
                b'b' => {
                    // state_dict()'s `_metadata` attribute arrives as BUILD on the dict: the
                    // attributes are dropped, the dict kept.
                    let _state = self.pop()?;
                    if !matches!(self.top()?, Value::Dict(_)) {
                        let k = self.top()?.kind();
                        return self.fail(format!("BUILD on {k}: only dicts are rebuilt"));
                    }
                }
                other => {
                    return self.fail(format!(
                        "opcode 0x{other:02x} ({}) is outside the subset a state dict uses",
                        if other.is_ascii_graphic() {
                            format!("'{}'", other as char)
                        } else {
                            "binary".into()
                        }
                    ))
                }
            }
        }
    }
}

/// Runs the pickle `data` and returns the object it builds.
pub fn load(data: &[u8]) -> std::result::Result<Value, PickleError> {
    let mut m = Machine {
        data,
        pos: 0,
        op_at: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    };
    m.run()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(data: &[u8]) -> String {
        match load(data) {
            Ok(v) => panic!("expected an error, got {}", v.kind()),
            Err(e) => format!("at {}: {}", e.offset, e.message),
        }
    }

    #[test]
    fn builds_dicts_tuples_numbers_and_shared_memo_entries() {
        // {'a': (1, -2, 3.5, True, None), 'b': d, 'c': d} with one shared dict d, by hand.
        let mut q = vec![0x80, 2, b'}', b'q', 0, b'(', 0x8c, 1, b'a', b'('];
        q.extend_from_slice(&[b'K', 1, 0x8a, 1, 0xfe, b'G']);
        q.extend_from_slice(&3.5f64.to_be_bytes());
        q.extend_from_slice(&[0x88, b'N', b't']);
        q.extend_from_slice(&[
            0x8c, 1, b'b', b'}', b'q', 1, 0x8c, 1, b'c', b'h', 1, b'u', b'.',
        ]);
        let v = load(&q).unwrap_or_else(|e| panic!("{}: {}", e.offset, e.message));
        let Value::Dict(d) = v else { panic!() };
        let d = d.borrow();
        assert_eq!(d.len(), 3);
        let Value::Tuple(t) = &d[0].1 else { panic!() };
        assert!(matches!(t[0], Value::Int(1)));
        assert!(matches!(t[1], Value::Int(-2)));
        assert!(matches!(t[2], Value::Float(f) if f == 3.5));
        assert!(matches!(t[3], Value::Bool(true)));
        assert!(matches!(t[4], Value::None));
        // 'b' and 'c' are the same object (memo), as pickle means.
        let (Value::Dict(b), Value::Dict(c)) = (&d[1].1, &d[2].1) else {
            panic!()
        };
        assert!(Rc::ptr_eq(b, c));
    }

    #[test]
    fn refuses_code_and_unknown_opcodes_and_truncation() {
        // GLOBAL os.system, then REDUCE: refused at the GLOBAL, never run.
        let e = err(b"\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00lsq\x01\x85R.");
        assert!(e.contains("`os.system`") && e.starts_with("at 2:"), "{e}");
        let e = err(b"\x80\x02cbuiltins\neval\n.");
        assert!(e.contains("builtins.eval"), "{e}");
        // STACK_GLOBAL of a forbidden class.
        let e = err(b"\x80\x04\x8c\x08builtins\x8c\x04exec\x93.");
        assert!(e.contains("builtins.exec"), "{e}");
        // INST ('i') and OBJ ('o') and NEWOBJ (0x81) are not in the subset.
        for op in [b'i', b'o', 0x81u8, b'S', b'V'] {
            let e = err(&[0x80, 2, op, b'.']);
            assert!(
                e.contains("outside the subset") && e.starts_with("at 2:"),
                "{e}"
            );
        }
        // Truncations: inside an argument, and before STOP.
        assert!(err(b"\x80\x02X\x05\x00\x00\x00ab").contains("ends inside"));
        assert!(err(b"\x80\x02}").contains("without STOP"));
        assert!(err(b"\x80\x02h\x07.").contains("memo entry 7"));
        assert!(err(b"\x80\x02u.").contains("no MARK"));
        assert!(err(b"\x80\x02t.").contains("no MARK"));
        assert!(err(b"\x80\x02.").contains("STOP"));
        // REDUCE of an allowed class with a wrong argument form.
        let e = err(b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n)R.");
        assert!(e.contains("not a form"), "{e}");
        // BUILD on a non-dict.
        assert!(err(b"\x80\x02K\x01}b.").contains("BUILD on an int"));
    }
}
