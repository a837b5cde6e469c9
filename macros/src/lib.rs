//! `#[arca::remote]` and `#[arca::actor]`: turn a function into a task and an
//! `impl` block into an actor. Use them through the `arca` crate.
//!
//! ```ignore
//! #[arca::remote]
//! fn square(x: i64) -> i64 { x * x }
//! let r = square::remote(3);            // ObjectRef<i64>
//!
//! struct Counter { n: i64 }
//! #[arca::actor]
//! impl Counter {
//!     fn new(n: i64) -> Self { Counter { n } }
//!     fn incr(&mut self, by: i64) -> i64 { self.n += by; self.n }
//! }
//! let c = Counter::remote(0);           // CounterHandle
//! let r = c.incr(1);                    // ObjectRef<i64>
//! ```

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as Tokens};
use quote::{format_ident, quote};
use syn::{FnArg, Ident, ImplItem, ItemFn, ItemImpl, Pat, ReturnType, Type, parse_macro_input};

/// Makes a function remote: `f::remote(args)` runs it as a task in a worker
/// process and returns an `ObjectRef` to its result; `f::options()` sets
/// resources and retries first. Arguments may be values or ObjectRefs. A
/// function returning `Result<T, E>` fails its task with `E`'s message.
///
/// `#[arca::remote(num_returns = N)]` on a function returning an N-tuple
/// gives N ObjectRefs, one per element. A function returning `Vec<T>` can
/// also be split at call time: `f::options().num_returns(n).remote(args)`
/// gives `n` `ObjectRef<T>`s (the `Vec` must have `n` elements).
#[proc_macro_attribute]
pub fn remote(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut num_returns = 1usize;
    let parser = syn::meta::parser(|meta| parse_num_returns(meta, &mut num_returns));
    parse_macro_input!(attr with parser);
    let f = parse_macro_input!(item as ItemFn);
    match expand_remote(&f, num_returns) {
        Ok(t) => t.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// Reads the one argument `remote` and `method` take: `num_returns = N`.
fn parse_num_returns(meta: syn::meta::ParseNestedMeta, n: &mut usize) -> syn::Result<()> {
    if meta.path.is_ident("num_returns") {
        *n = meta.value()?.parse::<syn::LitInt>()?.base10_parse()?;
        Ok(())
    } else {
        Err(meta.error("expected `num_returns = N`"))
    }
}

struct Param {
    name: Ident,
    ty: Type,
}

fn params<'a>(inputs: impl Iterator<Item = &'a FnArg>) -> syn::Result<Vec<Param>> {
    inputs
        .enumerate()
        .map(|(i, a)| match a {
            FnArg::Typed(t) => Ok(Param {
                name: match &*t.pat {
                    Pat::Ident(p) => format_ident!(
                        "{}",
                        p.ident.to_string().trim_start_matches('_').to_string() + "_"
                    ),
                    _ => format_ident!("arg{i}"),
                },
                ty: (*t.ty).clone(),
            }),
            FnArg::Receiver(r) => Err(syn::Error::new_spanned(
                r,
                "a remote function takes no `self`; use #[arca::actor] on the impl block",
            )),
        })
        .collect()
}

/// The value type a function's return makes, and whether it is a `Result`.
fn output(ret: &ReturnType) -> (Type, bool) {
    let ty = match ret {
        ReturnType::Default => return (syn::parse_quote!(()), false),
        ReturnType::Type(_, t) => (**t).clone(),
    };
    if let Type::Path(p) = &ty
        && let Some(last) = p.path.segments.last()
        && last.ident == "Result"
        && let syn::PathArguments::AngleBracketed(args) = &last.arguments
        && let Some(syn::GenericArgument::Type(t)) = args.args.first()
    {
        return (t.clone(), true);
    }
    (ty, false)
}

/// `X` for a `Vec<X>` return type: such a function can also be called with
/// `options().num_returns(n)`, one ObjectRef per element.
fn vec_elem(ty: &Type) -> Option<Type> {
    if let Type::Path(p) = ty
        && let Some(last) = p.path.segments.last()
        && last.ident == "Vec"
        && let syn::PathArguments::AngleBracketed(args) = &last.arguments
        && let Some(syn::GenericArgument::Type(t)) = args.args.first()
    {
        return Some(t.clone());
    }
    None
}

/// Types of the ObjectRefs a call returns, and the code that builds them from ids.
fn refs(value: &Type, num_returns: usize, span: Span) -> syn::Result<(Tokens, Tokens, Tokens)> {
    if num_returns == 1 {
        return Ok((
            quote!(::arca::ObjectRef<#value>),
            quote!(::arca::__private::returns::<#value>(&__ids, 0)),
            quote!(::std::vec![::arca::__private::result(&__r)?]),
        ));
    }
    let Type::Tuple(t) = value else {
        return Err(syn::Error::new(
            span,
            "num_returns = N needs a function that returns an N-tuple",
        ));
    };
    if t.elems.len() != num_returns {
        return Err(syn::Error::new(
            span,
            format!(
                "num_returns = {num_returns} but the function returns a {}-tuple",
                t.elems.len()
            ),
        ));
    }
    let elems: Vec<&Type> = t.elems.iter().collect();
    let idx: Vec<syn::Index> = (0..num_returns).map(syn::Index::from).collect();
    Ok((
        quote!((#(::arca::ObjectRef<#elems>),*)),
        quote!((#(::arca::__private::returns::<#elems>(&__ids, #idx)),*)),
        quote!(::std::vec![#(::arca::__private::result(&__r.#idx)?),*]),
    ))
}

fn expand_remote(f: &ItemFn, num_returns: usize) -> syn::Result<Tokens> {
    let sig = &f.sig;
    if sig.asyncness.is_some() || !sig.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            sig,
            "a remote function cannot be async or generic",
        ));
    }
    let vis = &f.vis;
    let name = &sig.ident;
    let ps = params(sig.inputs.iter())?;
    let (value, is_result) = output(&sig.output);
    let (ret, build, mut encode) = refs(&value, num_returns, Span::call_site())?;
    let names: Vec<&Ident> = ps.iter().map(|p| &p.name).collect();
    let tys: Vec<&Type> = ps.iter().map(|p| &p.ty).collect();
    let idx: Vec<usize> = (0..ps.len()).collect();
    let n_args = ps.len();
    let unwrap = if is_result {
        quote!(let __r = __r.map_err(::arca::__private::failure)?;)
    } else {
        quote!()
    };
    // A function returning Vec<X> may be split into one ObjectRef per
    // element at call time, as Ray's `.options(num_returns=n)`.
    let elem = (num_returns == 1).then(|| vec_elem(&value)).flatten();
    let (split, split_struct) = match &elem {
        Some(x) => {
            encode = quote!(::arca::__private::results(__r, __split)?);
            let option = quote! {
                /// Returns one ObjectRef per element of the returned `Vec`,
                /// which must have `n` elements (else every ref gets the
                /// error).
                pub fn num_returns(self, n: usize) -> Split { Split(self.0.split_returns(), n) }
            };
            let tys = &tys;
            let names = &names;
            let builder = quote! {
                /// Call options with `num_returns`; end with `.remote(args)`.
                #[derive(Debug, Clone)]
                pub struct Split(pub ::arca::TaskOptions, usize);

                impl Split {
                    /// Submits the call: one ObjectRef per returned element.
                    pub fn remote(self, #(#names: impl ::arca::IntoArg<#tys>),*) -> ::std::vec::Vec<::arca::ObjectRef<#x>> {
                        self.try_remote(#(#names),*).unwrap_or_else(|e| ::core::panic!("cannot submit {}: {e}", NAME))
                    }

                    /// Submits the call, returning errors.
                    pub fn try_remote(self, #(#names: impl ::arca::IntoArg<#tys>),*) -> ::arca::Result<::std::vec::Vec<::arca::ObjectRef<#x>>> {
                        let __ids = __submit(&self.0, self.1, #(#names),*)?;
                        ::core::result::Result::Ok((0..__ids.len()).map(|i| ::arca::__private::returns::<#x>(&__ids, i)).collect())
                    }
                }
            };
            (option, builder)
        }
        None => (quote!(), quote!()),
    };
    let doc = format!("`{name}` as a task: [`remote`] runs it in a worker process.");
    Ok(quote! {
        #f

        #[doc = #doc]
        #[allow(unused_imports, clippy::all, private_interfaces)]
        #vis mod #name {
            use super::*;

            /// The name workers find this function by.
            pub const NAME: &str = ::core::module_path!();

            /// Runs the function as a task; panics if the runtime is not
            /// initialized (see `try_remote`).
            pub fn remote(#(#names: impl ::arca::IntoArg<#tys>),*) -> #ret {
                options().remote(#(#names),*)
            }

            /// [`remote`] that returns submission errors.
            pub fn try_remote(#(#names: impl ::arca::IntoArg<#tys>),*) -> ::arca::Result<#ret> {
                options().try_remote(#(#names),*)
            }

            /// Options (resources, retries) for one call.
            pub fn options() -> Options {
                Options(::arca::TaskOptions::new(NAME))
            }

            /// Call options; end with `.remote(args)`.
            #[derive(Debug, Clone)]
            pub struct Options(pub ::arca::TaskOptions);

            impl Options {
                /// CPUs to reserve (default 1).
                pub fn num_cpus(self, n: f64) -> Self { Self(self.0.num_cpus(n)) }
                /// GPUs to reserve.
                pub fn num_gpus(self, n: f64) -> Self { Self(self.0.num_gpus(n)) }
                /// Memory to reserve, in bytes.
                pub fn memory(self, bytes: u64) -> Self { Self(self.0.memory(bytes)) }
                /// A custom resource.
                pub fn resources(self, name: &str, amount: f64) -> Self { Self(self.0.resources(name, amount)) }
                /// Retries if the worker dies (default 3).
                pub fn max_retries(self, n: u32) -> Self { Self(self.0.max_retries(n)) }
                #split

                /// Submits the call.
                pub fn remote(self, #(#names: impl ::arca::IntoArg<#tys>),*) -> #ret {
                    self.try_remote(#(#names),*).unwrap_or_else(|e| ::core::panic!("cannot submit {}: {e}", NAME))
                }

                /// Submits the call, returning errors.
                pub fn try_remote(self, #(#names: impl ::arca::IntoArg<#tys>),*) -> ::arca::Result<#ret> {
                    let __ids = __submit(&self.0, #num_returns, #(#names),*)?;
                    ::core::result::Result::Ok(#build)
                }
            }

            #split_struct

            /// Submits a call with `n` results; their ids.
            fn __submit(__o: &::arca::TaskOptions, __n: usize, #(#names: impl ::arca::IntoArg<#tys>),*) -> ::arca::Result<::std::vec::Vec<::arca::ObjectId>> {
                let mut __a = ::arca::__private::ArgsBuilder::default();
                #(__a.push::<#tys>(#names)?;)*
                ::arca::__private::submit(__o, __a, __n)
            }

            fn __call(__args: &[::arca::__private::ArgData], __split: ::core::option::Option<usize>) -> ::core::result::Result<::std::vec::Vec<::arca::__private::Encoded>, ::arca::__private::TaskFailure> {
                if __args.len() != #n_args {
                    return ::core::result::Result::Err(::arca::__private::TaskFailure::new(::std::format!("{} takes {} arguments, got {}", NAME, #n_args, __args.len())));
                }
                let __r = super::#name(#(__args[#idx].decode::<#tys>()?),*);
                #unwrap
                ::core::result::Result::Ok(#encode)
            }

            ::arca::__private::inventory::submit! {
                ::arca::__private::RemoteFunction { name: NAME, call: __call }
            }
        }
    })
}

/// Makes the type of an `impl` block an actor. The block needs a
/// constructor `fn new(..) -> Self` (or `-> Result<Self, E>`); every method
/// taking `&self` or `&mut self` can be called remotely.
///
/// Generates `Type::remote(args) -> TypeHandle` (and `Type::options()` for
/// resources and `max_restarts`), and on `TypeHandle` one method per actor
/// method, returning an `ObjectRef` to its result. A method marked
/// `#[arca::method(num_returns = N)]` returns an N-tuple and its handle
/// method N ObjectRefs, one per element (Ray's `@ray.method(num_returns=N)`).
#[proc_macro_attribute]
pub fn actor(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        let e = syn::Error::new(Span::call_site(), "#[arca::actor] takes no arguments");
        return e.to_compile_error().into();
    }
    let mut block = parse_macro_input!(item as ItemImpl);
    match expand_actor(&mut block) {
        Ok(t) => t.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// `#[arca::method(num_returns = N)]`: read by `#[arca::actor]` on the
/// methods of its block. Anywhere else it is an error.
#[proc_macro_attribute]
pub fn method(_attr: TokenStream, _item: TokenStream) -> TokenStream {
    syn::Error::new(
        Span::call_site(),
        "#[arca::method] goes on a method inside an #[arca::actor] impl block",
    )
    .to_compile_error()
    .into()
}

/// Takes a method's `#[arca::method(num_returns = N)]` (or `#[method(..)]`)
/// off it and returns N (1 without the attribute).
fn take_method_attr(m: &mut syn::ImplItemFn) -> syn::Result<usize> {
    let mut num_returns = 1usize;
    let mut err = None;
    m.attrs.retain(|a| {
        let p = a.path();
        let ours = p.is_ident("method")
            || (p.segments.len() == 2
                && p.segments[0].ident == "arca"
                && p.segments[1].ident == "method");
        if ours
            && let Err(e) = a.parse_nested_meta(|meta| parse_num_returns(meta, &mut num_returns))
        {
            err = Some(e);
        }
        !ours
    });
    match err {
        Some(e) => Err(e),
        None => Ok(num_returns),
    }
}

fn expand_actor(block: &mut ItemImpl) -> syn::Result<Tokens> {
    // The methods (with their number of returns, the attribute taken off
    // the block the macro emits again) and the constructor, copied out.
    let mut ctor = None;
    let mut methods = Vec::new();
    for item in &mut block.items {
        let ImplItem::Fn(m) = item else { continue };
        match m.sig.inputs.first() {
            Some(FnArg::Receiver(_)) => {
                let num_returns = take_method_attr(m)?;
                methods.push((m.clone(), num_returns));
            }
            _ if m.sig.ident == "new" => ctor = Some(m.clone()),
            _ => {}
        }
    }
    let block = &*block;
    let ty = &block.self_ty;
    let Type::Path(tp) = &**ty else {
        return Err(syn::Error::new_spanned(
            ty,
            "#[arca::actor] goes on `impl Type { .. }`",
        ));
    };
    if block.trait_.is_some() || !block.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            ty,
            "#[arca::actor] goes on a plain, non-generic `impl Type { .. }`",
        ));
    }
    let tname = &tp
        .path
        .segments
        .last()
        .ok_or_else(|| syn::Error::new_spanned(ty, "no type name"))?
        .ident;
    let handle = format_ident!("{tname}Handle");
    let options = format_ident!("{tname}Options");
    let hidden = format_ident!("__arca_actor_{tname}");
    let ctor = ctor.ok_or_else(|| {
        syn::Error::new_spanned(ty, "an actor needs a constructor `fn new(..) -> Self`")
    })?;
    let cps = params(ctor.sig.inputs.iter())?;
    let (_, ctor_result) = output(&ctor.sig.output);
    let cnames: Vec<&Ident> = cps.iter().map(|p| &p.name).collect();
    let ctys: Vec<&Type> = cps.iter().map(|p| &p.ty).collect();
    let cidx: Vec<usize> = (0..cps.len()).collect();
    let n_cargs = cps.len();
    let c_unwrap = if ctor_result {
        quote!(let __v = __v.map_err(::arca::__private::failure)?;)
    } else {
        quote!()
    };
    let ctor_name = format!("::{tname}::new");

    let mut handle_methods = Vec::new();
    let mut registrations = Vec::new();
    for (m, num_returns) in &methods {
        let num_returns = *num_returns;
        let mname = &m.sig.ident;
        let const_name = format_ident!("__ARCA_{}", mname.to_string().to_uppercase());
        let full = format!("::{tname}::{mname}");
        let ps = params(m.sig.inputs.iter().skip(1))?;
        let (value, is_result) = output(&m.sig.output);
        let span = syn::spanned::Spanned::span(&m.sig);
        let (ret, build, encode) = refs(&value, num_returns, span)?;
        let names: Vec<&Ident> = ps.iter().map(|p| &p.name).collect();
        let tys: Vec<&Type> = ps.iter().map(|p| &p.ty).collect();
        let idx: Vec<usize> = (0..ps.len()).collect();
        let n_args = ps.len();
        let vis = &m.vis;
        let unwrap = if is_result {
            quote!(let __r = __r.map_err(::arca::__private::failure)?;)
        } else {
            quote!()
        };
        let call_fn = format_ident!("__call_{mname}");
        let doc = format!(
            "Calls `{tname}::{mname}` on the actor; the result arrives through the ObjectRef."
        );
        handle_methods.push(quote! {
            #[doc(hidden)]
            const #const_name: &'static str = ::core::concat!(::core::module_path!(), #full);

            #[doc = #doc]
            #vis fn #mname(&self, #(#names: impl ::arca::IntoArg<#tys>),*) -> #ret {
                let __go = || -> ::arca::Result<#ret> {
                    let mut __a = ::arca::__private::ArgsBuilder::default();
                    #(__a.push::<#tys>(#names)?;)*
                    let __ids = self.0.call(Self::#const_name, __a, #num_returns)?;
                    ::core::result::Result::Ok(#build)
                };
                __go().unwrap_or_else(|e| ::core::panic!("cannot call {}: {e}", Self::#const_name))
            }
        });
        registrations.push(quote! {
            fn #call_fn(
                __state: &mut (dyn ::core::any::Any + ::core::marker::Send),
                __args: &[::arca::__private::ArgData],
            ) -> ::core::result::Result<::std::vec::Vec<::arca::__private::Encoded>, ::arca::__private::TaskFailure> {
                if __args.len() != #n_args {
                    return ::core::result::Result::Err(::arca::__private::TaskFailure::new(::std::format!("{} takes {} arguments, got {}", #handle::#const_name, #n_args, __args.len())));
                }
                let __s = __state.downcast_mut::<#ty>().ok_or_else(|| ::arca::__private::TaskFailure::new("the actor's state has another type"))?;
                let __r = __s.#mname(#(__args[#idx].decode::<#tys>()?),*);
                #unwrap
                ::core::result::Result::Ok(#encode)
            }
            ::arca::__private::inventory::submit! {
                ::arca::__private::ActorMethod { name: #handle::#const_name, call: #call_fn }
            }
        });
    }

    Ok(quote! {
        #block

        /// A handle to an actor: clone it, pass it to tasks; each method
        /// call returns an ObjectRef.
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        #[allow(private_interfaces)]
        pub struct #handle(pub ::arca::ActorHandle);

        #[allow(private_interfaces, clippy::all)]
        impl #handle {
            #[doc(hidden)]
            const __ARCA_NEW: &'static str = ::core::concat!(::core::module_path!(), #ctor_name);

            /// The untyped handle (for `arca::kill`, the actor's id).
            pub fn handle(&self) -> &::arca::ActorHandle { &self.0 }

            #(#handle_methods)*
        }

        impl ::arca::__private::serde::Serialize for #handle {
            fn serialize<S: ::arca::__private::serde::Serializer>(&self, s: S) -> ::core::result::Result<S::Ok, S::Error> {
                ::arca::__private::serde::Serialize::serialize(&self.0, s)
            }
        }

        impl<'de> ::arca::__private::serde::Deserialize<'de> for #handle {
            fn deserialize<D: ::arca::__private::serde::Deserializer<'de>>(d: D) -> ::core::result::Result<Self, D::Error> {
                <::arca::ActorHandle as ::arca::__private::serde::Deserialize>::deserialize(d).map(Self)
            }
        }

        /// Options for creating the actor; end with `.remote(args)`.
        #[derive(Debug, Clone)]
        pub struct #options(pub ::arca::TaskOptions);

        #[allow(private_interfaces, clippy::all)]
        impl #options {
            /// CPUs held for the actor's lifetime (default 0).
            pub fn num_cpus(self, n: f64) -> Self { Self(self.0.num_cpus(n)) }
            /// GPUs held for the actor's lifetime.
            pub fn num_gpus(self, n: f64) -> Self { Self(self.0.num_gpus(n)) }
            /// Memory held, in bytes.
            pub fn memory(self, bytes: u64) -> Self { Self(self.0.memory(bytes)) }
            /// A custom resource.
            pub fn resources(self, name: &str, amount: f64) -> Self { Self(self.0.resources(name, amount)) }
            /// Restarts if its process dies (default 0).
            pub fn max_restarts(self, n: u32) -> Self { Self(self.0.max_restarts(n)) }

            /// Creates the actor in its own worker process.
            pub fn remote(self, #(#cnames: impl ::arca::IntoArg<#ctys>),*) -> #handle {
                let __go = || -> ::arca::Result<#handle> {
                    let mut __a = ::arca::__private::ArgsBuilder::default();
                    #(__a.push::<#ctys>(#cnames)?;)*
                    ::core::result::Result::Ok(#handle(::arca::ActorHandle::create(&self.0, __a)?))
                };
                __go().unwrap_or_else(|e| ::core::panic!("cannot create {}: {e}", #handle::__ARCA_NEW))
            }
        }

        #[allow(private_interfaces, clippy::all)]
        impl #ty {
            /// Creates the actor in its own worker process.
            pub fn remote(#(#cnames: impl ::arca::IntoArg<#ctys>),*) -> #handle {
                Self::options().remote(#(#cnames),*)
            }

            /// Options (resources, restarts) for creating the actor.
            pub fn options() -> #options {
                #options(::arca::TaskOptions::actor(#handle::__ARCA_NEW))
            }
        }

        #[doc(hidden)]
        #[allow(non_snake_case, unused_imports, clippy::all)]
        mod #hidden {
            use super::*;

            fn __construct(
                __args: &[::arca::__private::ArgData],
            ) -> ::core::result::Result<::std::boxed::Box<dyn ::core::any::Any + ::core::marker::Send>, ::arca::__private::TaskFailure> {
                if __args.len() != #n_cargs {
                    return ::core::result::Result::Err(::arca::__private::TaskFailure::new("wrong number of constructor arguments"));
                }
                let __v = <#ty>::new(#(__args[#cidx].decode::<#ctys>()?),*);
                #c_unwrap
                ::core::result::Result::Ok(::std::boxed::Box::new(__v))
            }
            ::arca::__private::inventory::submit! {
                ::arca::__private::ActorConstructor { name: #handle::__ARCA_NEW, call: __construct }
            }

            #(#registrations)*
        }
    })
}
