//! Just enough pickle support to be able to read PyTorch checkpoints.
// This hardcodes objects that are required for tensor reading, we may want to make this a bit more
// composable/tensor agnostic at some point.
use crate::{Context, DType, Error as E, Layout, Result, Tensor};
use byteorder::{LittleEndian, ReadBytesExt};
use std::collections::HashMap;
use std::io::{BufRead, Read};

const VERBOSE: bool = false;

// https://docs.juliahub.com/Pickle/LAUNc/0.1.0/opcode/
#[repr(u8)]
#[derive(Debug, Eq, PartialEq, Clone)]
pub enum OpCode {
    // https://github.com/python/cpython/blob/ed25f097160b5cbb0c9a1f9a746d2f1bbc96515a/Lib/pickletools.py#L2123
    Proto = 0x80,
    Global = b'c',
    BinPut = b'q',
    LongBinPut = b'r',
    EmptyTuple = b')',
    Reduce = b'R',
    Mark = b'(',
    BinUnicode = b'X',
    BinInt = b'J',
    Tuple = b't',
    BinPersId = b'Q',
    BinInt1 = b'K',
    BinInt2 = b'M',
    Tuple1 = 0x85,
    Tuple2 = 0x86,
    Tuple3 = 0x87,
    NewTrue = 0x88,
    NewFalse = 0x89,
    None = b'N',
    BinGet = b'h',
    LongBinGet = b'j',
    SetItem = b's',
    SetItems = b'u',
    EmptyDict = b'}',
    Dict = b'd',
    Build = b'b',
    Stop = b'.',
    NewObj = 0x81,
    EmptyList = b']',
    BinFloat = b'G',
    Append = b'a',
    Appends = b'e',
    Long1 = 0x8a,
}

// Avoid using FromPrimitive so as not to drag another dependency.
impl TryFrom<u8> for OpCode {
    type Error = u8;
    fn try_from(value: u8) -> std::result::Result<Self, Self::Error> {
        match value {
            0x80 => Ok(Self::Proto),
            b'c' => Ok(Self::Global),
            b'q' => Ok(Self::BinPut),
            b'r' => Ok(Self::LongBinPut),
            b')' => Ok(Self::EmptyTuple),
            b'R' => Ok(Self::Reduce),
            b'(' => Ok(Self::Mark),
            b'X' => Ok(Self::BinUnicode),
            b'J' => Ok(Self::BinInt),
            b't' => Ok(Self::Tuple),
            b'Q' => Ok(Self::BinPersId),
            b'K' => Ok(Self::BinInt1),
            b'M' => Ok(Self::BinInt2),
            b'N' => Ok(Self::None),
            0x85 => Ok(Self::Tuple1),
            0x86 => Ok(Self::Tuple2),
            0x87 => Ok(Self::Tuple3),
            0x88 => Ok(Self::NewTrue),
            0x89 => Ok(Self::NewFalse),
            b'h' => Ok(Self::BinGet),
            b'j' => Ok(Self::LongBinGet),
            b's' => Ok(Self::SetItem),
            b'u' => Ok(Self::SetItems),
            b'}' => Ok(Self::EmptyDict),
            b'd' => Ok(Self::EmptyDict),
            b'b' => Ok(Self::Build),
            b'.' => Ok(Self::Stop),
            0x81 => Ok(Self::NewObj),
            b']' => Ok(Self::EmptyList),
            b'G' => Ok(Self::BinFloat),
            b'a' => Ok(Self::Append),
            b'e' => Ok(Self::Appends),
            0x8a => Ok(Self::Long1),
            value => Err(value),
        }
    }
}

fn read_to_newline<R: BufRead>(r: &mut R) -> Result<Vec<u8>> {
    let mut data: Vec<u8> = Vec::with_capacity(32);
    r.read_until(b'\n', &mut data)?;
    data.pop();
    if data.last() == Some(&b'\r') {
        data.pop();
    }
    Ok(data)
}

#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    Class {
        module_name: String,
        class_name: String,
    },
    Int(i32),
    Long(i64),
    Float(f64),
    Unicode(String),
    Bool(bool),
    None,
    Tuple(Vec<Object>),
    List(Vec<Object>),
    Mark,
    Dict(Vec<(Object, Object)>),
    Reduce {
        callable: Box<Object>,
        args: Box<Object>,
    },
    Build {
        callable: Box<Object>,
        args: Box<Object>,
    },
    PersistentLoad(Box<Object>),
}

type OResult<T> = std::result::Result<T, Object>;

impl Object {
    pub fn unicode(self) -> OResult<String> {
        match self {
            Self::Unicode(t) => Ok(t),
            _ => Err(self),
        }
    }

    pub fn reduce(self) -> OResult<(Self, Self)> {
        match self {
            Self::Reduce { callable, args } => Ok((*callable, *args)),
            _ => Err(self),
        }
    }

    pub fn none(self) -> OResult<()> {
        match self {
            Self::None => Ok(()),
            _ => Err(self),
        }
    }

    pub fn persistent_load(self) -> OResult<Self> {
        match self {
            Self::PersistentLoad(t) => Ok(*t),
            _ => Err(self),
        }
    }

    pub fn bool(self) -> OResult<bool> {
        match self {
            Self::Bool(t) => Ok(t),
            _ => Err(self),
        }
    }

    pub fn int(self) -> OResult<i32> {
        match self {
            Self::Int(t) => Ok(t),
            _ => Err(self),
        }
    }

    pub fn int_or_long(self) -> OResult<i64> {
        match self {
            Self::Int(t) => Ok(t as i64),
            Self::Long(t) => Ok(t),
            _ => Err(self),
        }
    }

    pub fn tuple(self) -> OResult<Vec<Self>> {
        match self {
            Self::Tuple(t) => Ok(t),
            _ => Err(self),
        }
    }

    pub fn dict(self) -> OResult<Vec<(Self, Self)>> {
        match self {
            Self::Dict(t) => Ok(t),
            _ => Err(self),
        }
    }

    pub fn class(self) -> OResult<(String, String)> {
        match self {
            Self::Class {
                module_name,
                class_name,
            } => Ok((module_name, class_name)),
            _ => Err(self),
        }
    }

    pub fn into_tensor_info(
        self,
        name: Self,
        dir_name: &std::path::Path,
    ) -> Result<Option<TensorInfo>> {
        let name = match name.unicode() {
            Ok(name) => name,
            Err(_) => return Ok(None),
        };
        let (callable, args) = match self.reduce() {
            Ok(callable_args) => callable_args,
            _ => return Ok(None),
        };
        let (callable, args) = match callable {
            Object::Class {
                module_name,
                class_name,
            } if module_name == "torch._tensor" && class_name == "_rebuild_from_type_v2" => {
                let mut args = args.tuple()?;
                let callable = args.remove(0);
                let args = args.remove(1);
                (callable, args)
            }
            Object::Class {
                module_name,
                class_name,
            } if module_name == "torch._utils" && class_name == "_rebuild_parameter" => {
                let mut args = args.tuple()?;
                args.remove(0).reduce()?
            }
            _ => (callable, args),
        };
        match callable {
            Object::Class {
                module_name,
                class_name,
            } if module_name == "torch._utils" && class_name == "_rebuild_tensor_v2" => {}
            _ => return Ok(None),
        };
        let (layout, dtype, file_path, storage_size) = rebuild_args(args)?;
        Ok(Some(TensorInfo {
            name,
            dtype,
            layout,
            path: format!("{}/{}", dir_name.to_string_lossy(), file_path),
            storage_size,
        }))
    }
}

impl TryFrom<Object> for String {
    type Error = Object;
    fn try_from(value: Object) -> std::result::Result<Self, Self::Error> {
        match value {
            Object::Unicode(s) => Ok(s),
            other => Err(other),
        }
    }
}

impl TryFrom<Object> for usize {
    type Error = Object;
    fn try_from(value: Object) -> std::result::Result<Self, Self::Error> {
        match value {
            Object::Int(s) if s >= 0 => Ok(s as usize),
            other => Err(other),
        }
    }
}

impl<T: TryFrom<Object, Error = Object>> TryFrom<Object> for Vec<T> {
    type Error = Object;
    fn try_from(value: Object) -> std::result::Result<Self, Self::Error> {
        match value {
            Object::Tuple(values) => {
                // This does not return the appropriate value in the error case but instead return
                // the object related to the first error.
                values
                    .into_iter()
                    .map(|v| T::try_from(v))
                    .collect::<std::result::Result<Vec<T>, Self::Error>>()
            }
            other => Err(other),
        }
    }
}

/// How deep pickled objects may nest. Reading is a loop, but a nested `Object` is dropped, cloned and compared by
/// recursion: a pickle nesting 300,000 lists (a 600 KB file) overflowed the thread's stack. PyTorch checkpoints
/// nest fewer than 20 levels (a dict of state dicts of tensor records); Python's own recursion limit is 1000.
pub const MAX_DEPTH: usize = 1000;

/// How many objects one pickle may make, copies of memoized objects included: each `BINGET` copies the object
/// (the tree has no shared nodes), so a few bytes that fetch a large object again and again would otherwise ask
/// for unbounded memory. Checkpoints make tens of thousands.
pub const MAX_OBJECTS: usize = 20_000_000;

/// How deep an object nests and how many objects it holds (itself included), kept beside each stack entry so that
/// the limits are checked as objects are made, without walking them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shape {
    depth: usize,
    objects: usize,
}

impl Shape {
    const LEAF: Self = Self {
        depth: 1,
        objects: 1,
    };

    /// The shape of a container holding objects of these shapes.
    fn holding(children: impl IntoIterator<Item = Self>) -> Self {
        children.into_iter().fold(Self::LEAF, |s, c| s.with(c))
    }

    /// This container with one more child.
    fn with(self, child: Self) -> Self {
        Self {
            depth: self.depth.max(child.depth + 1),
            objects: self.objects.saturating_add(child.objects),
        }
    }
}

/// A memoized object. Pickle memoizes a container when it is made, before its items are set (`EMPTY_DICT`,
/// `BINPUT`, then `SETITEMS`), so while it is on the stack the memo refers to the stack entry, and takes a copy of
/// it when it leaves the stack complete. (Copying at `BINPUT`, as upstream candle does, memoized the empty dict:
/// a `train.py` checkpoint whose "model" and "ema" are one dict read "ema" as empty.)
#[derive(Debug)]
enum Memo {
    OnStack(usize),
    Done(Object, Shape),
}

#[derive(Debug)]
pub struct Stack {
    stack: Vec<Object>,
    /// The shape of each entry of `stack`.
    shapes: Vec<Shape>,
    memo: HashMap<u32, Memo>,
    /// The memo ids of entries still on the stack, by stack index (ascending: a `BINPUT` names the top).
    on_stack: Vec<(usize, u32)>,
    /// Objects made so far, copies included, and their bound ([`MAX_OBJECTS`] unless set).
    made: usize,
    max_objects: usize,
}

impl Stack {
    pub fn empty() -> Self {
        Self {
            stack: Vec::with_capacity(512),
            shapes: Vec::with_capacity(512),
            memo: HashMap::new(),
            on_stack: Vec::new(),
            made: 0,
            max_objects: MAX_OBJECTS,
        }
    }

    /// This reader with another bound on the objects a pickle may make (tests use a small one).
    pub fn with_max_objects(mut self, max_objects: usize) -> Self {
        self.max_objects = max_objects;
        self
    }

    pub fn stack(&self) -> &[Object] {
        self.stack.as_slice()
    }

    pub fn read_loop<R: BufRead>(&mut self, r: &mut R) -> Result<()> {
        loop {
            if self.read(r)? {
                break;
            }
        }
        Ok(())
    }

    pub fn finalize(mut self) -> Result<Object> {
        // Nothing reads the memo after the end: the last object leaves without a copy.
        self.shapes.pop();
        match self.stack.pop() {
            None => crate::bail!("unexpected empty stack"),
            Some(obj) => Ok(obj),
        }
    }

    /// Whether `objects` more objects stay within the bound.
    fn check_room(&self, objects: usize) -> Result<()> {
        if self.made.saturating_add(objects) > self.max_objects {
            crate::bail!(
                "pickle: makes more than {} objects (copies of memoized ones included); no checkpoint holds so many",
                self.max_objects
            )
        }
        Ok(())
    }

    /// Counts `objects` objects about to be made against the bound (before they are: a refused copy is never
    /// allocated).
    fn make(&mut self, objects: usize) -> Result<()> {
        self.check_room(objects)?;
        self.made += objects;
        Ok(())
    }

    /// Checks a shape about to be on the stack against [`MAX_DEPTH`].
    fn check_depth(shape: Shape) -> Result<()> {
        if shape.depth > MAX_DEPTH {
            crate::bail!(
                "pickle: objects nested deeper than {MAX_DEPTH} levels; no checkpoint nests so deep"
            )
        }
        Ok(())
    }

    fn push_shaped(&mut self, obj: Object, shape: Shape) -> Result<()> {
        Self::check_depth(shape)?;
        self.stack.push(obj);
        self.shapes.push(shape);
        Ok(())
    }

    /// Pushes a new object holding objects of the shapes `children` (already counted).
    fn push_holding(
        &mut self,
        obj: Object,
        children: impl IntoIterator<Item = Shape>,
    ) -> Result<()> {
        self.make(1)?;
        self.push_shaped(obj, Shape::holding(children))
    }

    fn push(&mut self, obj: Object) -> Result<()> {
        self.push_holding(obj, [])
    }

    /// The entry at `index` is leaving the stack: the memo entries that refer to it take a copy of it.
    fn leaving(&mut self, index: usize, obj: &Object, shape: Shape) -> Result<()> {
        while let Some(&(at, id)) = self.on_stack.last() {
            if at < index {
                break;
            }
            self.on_stack.pop();
            if matches!(self.memo.get(&id), Some(Memo::OnStack(i)) if *i == at) {
                self.make(shape.objects)?;
                self.memo.insert(id, Memo::Done(obj.clone(), shape));
            }
        }
        Ok(())
    }

    fn pop_shaped(&mut self) -> Result<(Object, Shape)> {
        let (Some(obj), Some(shape)) = (self.stack.pop(), self.shapes.pop()) else {
            crate::bail!("unexpected empty stack")
        };
        self.leaving(self.stack.len(), &obj, shape)?;
        Ok((obj, shape))
    }

    fn pop(&mut self) -> Result<Object> {
        Ok(self.pop_shaped()?.0)
    }

    // https://docs.juliahub.com/Pickle/LAUNc/0.1.0/opcode/#Pickle.OpCodes.BUILD
    // BUILD sets the state of the object below it, in place: it stays the object that was memoized.
    fn build(&mut self) -> Result<()> {
        let (args, args_shape) = self.pop_shaped()?;
        let (obj, shape) = self.last_shaped()?;
        let built = match (std::mem::replace(obj, Object::None), args) {
            (Object::Dict(mut obj), Object::Dict(mut args)) => {
                obj.append(&mut args);
                // The state's items join the dict: as deep as either, one container fewer.
                *shape = Shape {
                    depth: shape.depth.max(args_shape.depth),
                    objects: shape.objects.saturating_add(args_shape.objects - 1),
                };
                Object::Dict(obj)
            }
            (obj, args) => {
                *shape = Shape::holding([*shape, args_shape]);
                Object::Build {
                    callable: Box::new(obj),
                    args: Box::new(args),
                }
            }
        };
        *obj = built;
        let shape = *shape;
        Self::check_depth(shape)?;
        self.make(1)
    }

    fn reduce(&mut self) -> Result<()> {
        let (args, args_shape) = self.pop_shaped()?;
        let (callable, callable_shape) = self.pop_shaped()?;
        #[allow(clippy::single_match)]
        let reduced = match &callable {
            Object::Class {
                module_name,
                class_name,
            } => {
                if module_name == "collections"
                    && (class_name == "OrderedDict" || class_name == "defaultdict")
                {
                    // TODO: have a separate ordered dict and a separate default dict.
                    Some(Object::Dict(vec![]))
                } else {
                    None
                }
            }
            _ => None,
        };
        match reduced {
            Some(dict) => self.push(dict),
            None => self.push_holding(
                Object::Reduce {
                    callable: Box::new(callable),
                    args: Box::new(args),
                },
                [callable_shape, args_shape],
            ),
        }
    }

    fn last_shaped(&mut self) -> Result<(&mut Object, &mut Shape)> {
        match (self.stack.last_mut(), self.shapes.last_mut()) {
            (Some(obj), Some(shape)) => Ok((obj, shape)),
            _ => crate::bail!("unexpected empty stack"),
        }
    }

    /// Adds objects of the shapes `children` to the top entry (a list or dict being filled in).
    fn grow_last(&mut self, children: impl IntoIterator<Item = Shape>) -> Result<()> {
        let (_, shape) = self.last_shaped()?;
        *shape = children.into_iter().fold(*shape, Shape::with);
        let shape = *shape;
        Self::check_depth(shape)
    }

    fn memo_get(&mut self, id: u32) -> Result<()> {
        let (obj, shape) = match self.memo.get(&id) {
            None => crate::bail!("missing object in memo {id}"),
            Some(Memo::OnStack(i)) => match (self.stack.get(*i), self.shapes.get(*i)) {
                (Some(obj), Some(shape)) => (obj, *shape),
                _ => crate::bail!("memo {id} refers past the stack"),
            },
            Some(Memo::Done(obj, shape)) => (obj, *shape),
        };
        // The tree has no shared nodes: a fetched object is a copy, counted before it is made.
        self.check_room(shape.objects)?;
        let obj = obj.clone();
        self.made += shape.objects;
        self.push_shaped(obj, shape)
    }

    fn memo_put(&mut self, id: u32) -> Result<()> {
        let Some(top) = self.stack.len().checked_sub(1) else {
            crate::bail!("unexpected empty stack")
        };
        self.memo.insert(id, Memo::OnStack(top));
        self.on_stack.push((top, id));
        Ok(())
    }

    fn pop_to_marker(&mut self) -> Result<Vec<(Object, Shape)>> {
        let mut mark_idx = None;
        for (idx, obj) in self.stack.iter().enumerate().rev() {
            if obj == &Object::Mark {
                mark_idx = Some(idx);
                break;
            }
        }
        match mark_idx {
            Some(mark_idx) => {
                let mut objs = Vec::with_capacity(self.stack.len() - mark_idx - 1);
                while self.stack.len() > mark_idx + 1 {
                    objs.push(self.pop_shaped()?);
                }
                objs.reverse();
                self.pop()?;
                Ok(objs)
            }
            None => {
                crate::bail!("marker object not found")
            }
        }
    }

    /// Pops `n` objects, in the order they were pushed.
    fn pop_n<const N: usize>(&mut self) -> Result<[(Object, Shape); N]> {
        let mut objs: [(Object, Shape); N] = std::array::from_fn(|_| (Object::None, Shape::LEAF));
        for slot in objs.iter_mut().rev() {
            *slot = self.pop_shaped()?;
        }
        Ok(objs)
    }

    fn push_tuple(&mut self, items: Vec<(Object, Shape)>) -> Result<()> {
        let (objs, shapes): (Vec<_>, Vec<_>) = items.into_iter().unzip();
        self.push_holding(Object::Tuple(objs), shapes)
    }

    pub fn read<R: BufRead>(&mut self, r: &mut R) -> Result<bool> {
        let op_code = match OpCode::try_from(r.read_u8()?) {
            Ok(op_code) => op_code,
            Err(op_code) => {
                crate::bail!("unknown op-code {op_code}")
            }
        };
        // println!("op: {op_code:?}");
        // println!("{:?}", self.stack);
        match op_code {
            OpCode::Proto => {
                let version = r.read_u8()?;
                if VERBOSE {
                    println!("proto {version}");
                }
            }
            OpCode::Global => {
                let module_name = read_to_newline(r)?;
                let class_name = read_to_newline(r)?;
                let module_name = String::from_utf8_lossy(&module_name).to_string();
                let class_name = String::from_utf8_lossy(&class_name).to_string();
                self.push(Object::Class {
                    module_name,
                    class_name,
                })?
            }
            OpCode::BinInt1 => {
                let arg = r.read_u8()?;
                self.push(Object::Int(arg as i32))?
            }
            OpCode::BinInt2 => {
                let arg = r.read_u16::<LittleEndian>()?;
                self.push(Object::Int(arg as i32))?
            }
            OpCode::BinInt => {
                let arg = r.read_i32::<LittleEndian>()?;
                self.push(Object::Int(arg))?
            }
            OpCode::BinFloat => {
                // Somehow floats are encoded using BigEndian whereas int types use LittleEndian.
                // https://github.com/python/cpython/blob/0c80da4c14d904a367968955544dd6ae58c8101c/Lib/pickletools.py#L855
                // https://github.com/pytorch/pytorch/blob/372d078f361e726bb4ac0884ac334b04c58179ef/torch/_weights_only_unpickler.py#L243
                let arg = r.read_f64::<byteorder::BigEndian>()?;
                self.push(Object::Float(arg))?
            }
            OpCode::BinUnicode => {
                let len = r.read_u32::<LittleEndian>()?;
                // Read as far as the data goes, not allocated from the length field up front (up to 4 GiB
                // declared by four bytes).
                let mut data = Vec::new();
                r.by_ref().take(len as u64).read_to_end(&mut data)?;
                if data.len() != len as usize {
                    crate::bail!("string of {len} bytes cut short at {}", data.len())
                }
                let data = String::from_utf8(data).map_err(E::wrap)?;
                self.push(Object::Unicode(data))?
            }
            OpCode::BinPersId => {
                let (id, shape) = self.pop_shaped()?;
                self.push_holding(Object::PersistentLoad(Box::new(id)), [shape])?
            }
            OpCode::Tuple => {
                let objs = self.pop_to_marker()?;
                self.push_tuple(objs)?
            }
            OpCode::Tuple1 => {
                let objs = self.pop_n::<1>()?;
                self.push_tuple(objs.into())?
            }
            OpCode::Tuple2 => {
                let objs = self.pop_n::<2>()?;
                self.push_tuple(objs.into())?
            }
            OpCode::Tuple3 => {
                let objs = self.pop_n::<3>()?;
                self.push_tuple(objs.into())?
            }
            OpCode::NewTrue => self.push(Object::Bool(true))?,
            OpCode::NewFalse => self.push(Object::Bool(false))?,
            OpCode::Append => {
                let (value, shape) = self.pop_shaped()?;
                let (pylist, _) = self.last_shaped()?;
                if let Object::List(d) = pylist {
                    d.push(value)
                } else {
                    crate::bail!("expected a list, got {pylist:?}")
                }
                self.grow_last([shape])?
            }
            OpCode::Appends => {
                let objs = self.pop_to_marker()?;
                let (pylist, _) = self.last_shaped()?;
                let shapes: Vec<Shape> = objs.iter().map(|(_, s)| *s).collect();
                if let Object::List(d) = pylist {
                    d.extend(objs.into_iter().map(|(o, _)| o))
                } else {
                    crate::bail!("expected a list, got {pylist:?}")
                }
                self.grow_last(shapes)?
            }
            OpCode::SetItem => {
                let [(key, key_shape), (value, value_shape)] = self.pop_n::<2>()?;
                let (pydict, _) = self.last_shaped()?;
                if let Object::Dict(d) = pydict {
                    d.push((key, value))
                } else {
                    crate::bail!("expected a dict, got {pydict:?}")
                }
                self.grow_last([key_shape, value_shape])?
            }
            OpCode::SetItems => {
                let mut objs = self.pop_to_marker()?;
                let shapes: Vec<Shape> = objs.iter().map(|(_, s)| *s).collect();
                let (pydict, _) = self.last_shaped()?;
                if let Object::Dict(d) = pydict {
                    if objs.len() % 2 != 0 {
                        crate::bail!("setitems: not an even number of objects")
                    }
                    while let Some((value, _)) = objs.pop() {
                        let (key, _) = objs.pop().context("empty objs")?;
                        d.push((key, value))
                    }
                } else {
                    crate::bail!("expected a dict, got {pydict:?}")
                }
                self.grow_last(shapes)?
            }
            OpCode::None => self.push(Object::None)?,
            OpCode::Stop => {
                return Ok(true);
            }
            OpCode::Build => self.build()?,
            OpCode::EmptyDict => self.push(Object::Dict(vec![]))?,
            OpCode::Dict => {
                let mut objs = self.pop_to_marker()?;
                let shapes: Vec<Shape> = objs.iter().map(|(_, s)| *s).collect();
                let mut pydict = vec![];
                if objs.len() % 2 != 0 {
                    crate::bail!("setitems: not an even number of objects")
                }
                while let Some((value, _)) = objs.pop() {
                    let (key, _) = objs.pop().context("empty objs")?;
                    pydict.push((key, value))
                }
                self.push_holding(Object::Dict(pydict), shapes)?
            }
            OpCode::Mark => self.push(Object::Mark)?,
            OpCode::Reduce => self.reduce()?,
            OpCode::EmptyTuple => self.push(Object::Tuple(vec![]))?,
            OpCode::EmptyList => self.push(Object::List(vec![]))?,
            OpCode::BinGet => {
                let arg = r.read_u8()?;
                self.memo_get(arg as u32)?
            }
            OpCode::LongBinGet => {
                let arg = r.read_u32::<LittleEndian>()?;
                self.memo_get(arg)?
            }
            OpCode::BinPut => {
                let arg = r.read_u8()?;
                self.memo_put(arg as u32)?
            }
            OpCode::LongBinPut => {
                let arg = r.read_u32::<LittleEndian>()?;
                self.memo_put(arg)?
            }
            OpCode::NewObj => {
                let [(class, class_shape), (args, args_shape)] = self.pop_n::<2>()?;
                self.push_holding(
                    Object::Reduce {
                        callable: Box::new(class),
                        args: Box::new(args),
                    },
                    [class_shape, args_shape],
                )?
            }
            OpCode::Long1 => {
                let n_bytes = r.read_u8()?;
                let mut v = 0;
                // Decode the next n bytes in little endian
                for i in 0..n_bytes {
                    v |= (r.read_u8()? as i64) << (i * 8);
                }
                self.push(Object::Long(v))?
            }
        }
        Ok(false)
    }
}

impl From<Object> for E {
    fn from(value: Object) -> Self {
        E::Msg(format!("conversion error on {value:?}"))
    }
}

// https://github.com/pytorch/pytorch/blob/4eac43d046ded0f0a5a5fa8db03eb40f45bf656e/torch/_utils.py#L198
// Arguments: storage, storage_offset, size, stride, requires_grad, backward_hooks
fn rebuild_args(args: Object) -> Result<(Layout, DType, String, usize)> {
    let mut args = args.tuple()?;
    let stride = Vec::<usize>::try_from(args.remove(3))?;
    let size = Vec::<usize>::try_from(args.remove(2))?;
    let offset = args.remove(1).int_or_long()? as usize;
    let storage = args.remove(0).persistent_load()?;
    let mut storage = storage.tuple()?;
    let storage_size = storage.remove(4).int_or_long()? as usize;
    let path = storage.remove(2).unicode()?;
    let (_module_name, class_name) = storage.remove(1).class()?;
    let dtype = match class_name.as_str() {
        "FloatStorage" => DType::F32,
        "DoubleStorage" => DType::F64,
        "HalfStorage" => DType::F16,
        "BFloat16Storage" => DType::BF16,
        "ByteStorage" => DType::U8,
        "LongStorage" => DType::I64,
        other => {
            crate::bail!("unsupported storage type {other}")
        }
    };
    let layout = Layout::new(
        crate::Shape::from(size),
        stride,
        offset * dtype.size_in_bytes(),
    );
    Ok((layout, dtype, path, storage_size))
}

#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: DType,
    pub layout: Layout,
    pub path: String,
    pub storage_size: usize,
}

/// Read the tensor info from a .pth file.
///
/// # Arguments
/// * `file` - The path to the .pth file.
/// * `verbose` - Whether to print debug information.
/// * `key` - Optional key to retrieve `state_dict` from the pth file.
pub fn read_pth_tensor_info<P: AsRef<std::path::Path>>(
    file: P,
    verbose: bool,
    key: Option<&str>,
) -> Result<Vec<TensorInfo>> {
    let file = std::fs::File::open(file)?;
    let zip_reader = std::io::BufReader::new(file);
    let mut zip = zip::ZipArchive::new(zip_reader)?;
    let zip_file_names = zip
        .file_names()
        .map(|f| f.map(|f| f.into_owned()))
        .collect::<std::result::Result<Vec<String>, _>>()?;

    let mut tensor_infos = vec![];
    for file_name in zip_file_names.iter() {
        if !file_name.ends_with("data.pkl") {
            continue;
        }
        let dir_name = std::path::PathBuf::from(file_name.strip_suffix(".pkl").context("no .pkl")?);
        let reader = zip.by_name(file_name)?;
        let mut reader = std::io::BufReader::new(reader);
        let mut stack = Stack::empty();
        stack.read_loop(&mut reader)?;
        let obj = stack.finalize()?;
        if VERBOSE || verbose {
            println!("{obj:#?}");
        }

        let obj = match obj {
            Object::Build { callable, args } => match *callable {
                Object::Reduce { callable, args: _ } => match *callable {
                    Object::Class {
                        module_name,
                        class_name,
                    } if module_name == "__torch__" && class_name == "Module" => *args,
                    _ => continue,
                },
                _ => continue,
            },
            obj => obj,
        };

        // If key is provided, then we need to extract the state_dict from the object.
        let obj = if let Some(key) = key {
            if let Object::Dict(key_values) = obj {
                key_values
                    .into_iter()
                    .find(|(k, _)| *k == Object::Unicode(key.to_owned()))
                    .map(|(_, v)| v)
                    .ok_or_else(|| E::Msg(format!("key {key} not found")))?
            } else {
                obj
            }
        } else {
            obj
        };

        // If the object is a dict, then we can extract the tensor info from it.
        // NOTE: We are assuming that the `obj` is state_dict by this stage.
        if let Object::Dict(key_values) = obj {
            for (name, value) in key_values.into_iter() {
                match value.into_tensor_info(name, &dir_name) {
                    Ok(Some(tensor_info)) => tensor_infos.push(tensor_info),
                    Ok(None) => {}
                    Err(err) => eprintln!("skipping: {err:?}"),
                }
            }
        }
    }
    Ok(tensor_infos)
}

/// Lazy tensor loader.
pub struct PthTensors {
    tensor_infos: HashMap<String, TensorInfo>,
    path: std::path::PathBuf,
    // We do not store a zip reader as it needs mutable access to extract data. Instead we
    // re-create a zip reader for each tensor.
}

impl PthTensors {
    pub fn new<P: AsRef<std::path::Path>>(path: P, key: Option<&str>) -> Result<Self> {
        let tensor_infos = read_pth_tensor_info(path.as_ref(), false, key)?;
        let tensor_infos = tensor_infos
            .into_iter()
            .map(|ti| (ti.name.to_string(), ti))
            .collect();
        let path = path.as_ref().to_owned();
        Ok(Self { tensor_infos, path })
    }

    pub fn tensor_infos(&self) -> &HashMap<String, TensorInfo> {
        &self.tensor_infos
    }

    pub fn get(&self, name: &str) -> Result<Option<Tensor>> {
        use std::io::Read;
        let tensor_info = match self.tensor_infos.get(name) {
            None => return Ok(None),
            Some(tensor_info) => tensor_info,
        };
        // We hope that the file has not changed since first reading it.
        let zip_reader = std::io::BufReader::new(std::fs::File::open(&self.path)?);
        let mut zip = zip::ZipArchive::new(zip_reader)?;
        let mut reader = zip.by_name(&tensor_info.path)?;
        let is_fortran_contiguous = tensor_info.layout.is_fortran_contiguous();
        let rank = tensor_info.layout.shape().rank();

        // Reading the data is a bit tricky as it can be strided, for now only support the basic
        // case and when the tensor is fortran contiguous.
        if !tensor_info.layout.is_contiguous() && !is_fortran_contiguous {
            crate::bail!(
                "cannot retrieve non-contiguous tensors {:?}",
                tensor_info.layout
            )
        }
        let start_offset = tensor_info.layout.start_offset();
        if start_offset > 0 {
            std::io::copy(
                &mut reader.by_ref().take(start_offset as u64),
                &mut std::io::sink(),
            )?;
        }
        let tensor = Tensor::from_reader(
            tensor_info.layout.shape().clone(),
            tensor_info.dtype,
            &mut reader,
        )?;

        if rank > 1 && is_fortran_contiguous {
            // Reverse the shape, e.g. Shape(2, 3, 4) -> Shape(4, 3, 2)
            let shape_reversed: Vec<_> = tensor_info.layout.dims().iter().rev().cloned().collect();
            let tensor = tensor.reshape(shape_reversed)?;

            // Permute (transpose) the dimensions, e.g. Shape(4, 3, 2) -> Shape(2, 3, 4)
            let dim_indices_reversed: Vec<_> = (0..rank).rev().collect();
            let tensor = tensor.permute(dim_indices_reversed)?;
            Ok(Some(tensor))
        } else {
            Ok(Some(tensor))
        }
    }
}

/// Read all the tensors from a PyTorch pth file with a given key.
///
/// # Arguments
/// * `path` - Path to the pth file.
/// * `key` - Optional key to retrieve `state_dict` from the pth file. Sometimes the pth file
///   contains multiple objects and the state_dict is the one we are interested in.
pub fn read_all_with_key<P: AsRef<std::path::Path>>(
    path: P,
    key: Option<&str>,
) -> Result<Vec<(String, Tensor)>> {
    let pth = PthTensors::new(path, key)?;
    let tensor_names = pth.tensor_infos.keys();
    let mut tensors = Vec::with_capacity(tensor_names.len());
    for name in tensor_names {
        if let Some(tensor) = pth.get(name)? {
            tensors.push((name.to_string(), tensor))
        }
    }
    Ok(tensors)
}

/// Read all the tensors from a PyTorch pth file.
///
/// # Arguments
/// * `path` - Path to the pth file.
pub fn read_all<P: AsRef<std::path::Path>>(path: P) -> Result<Vec<(String, Tensor)>> {
    read_all_with_key(path, None)
}
